//! Limits and grants of one call: every limit is a documented default with
//! a knob; every capability is denied unless granted.

use std::path::PathBuf;
use std::time::Duration;

/// Linear memory a guest may use by default. Enough for a map over a
/// 64 MiB split with its records; a guest that needs more says so.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

/// Wall time of one call by default. Long enough for real work on a split,
/// short enough that a stuck guest frees its worker within a minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of records or output one call may produce by default. The host
/// holds a call's output in memory, so this bounds the host too.
pub const DEFAULT_OUTPUT_BYTES: u64 = 256 << 20;

/// Bytes of log (log lines, stdout and stderr) kept per call by default.
/// Past it the log is cut with a marker and the call goes on: a chatty guest
/// loses log lines, not its result.
pub const DEFAULT_LOG_BYTES: u64 = 1 << 20;

/// Largest module accepted by default. Real guests are a few MiB; this
/// keeps a hostile upload from tying up the compiler.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 64 << 20;

/// Largest memory limit a call may ask for: the size of one slot of the
/// pooling allocator (virtual address space, not resident memory).
pub const DEFAULT_MAX_MEMORY_CEILING: u64 = 4 << 30;

/// Instances that may be alive at once in one process (slots of the pool).
pub const DEFAULT_MAX_INSTANCES: u32 = 64;

/// Table elements a guest may grow to (function tables of Rust guests hold
/// a few thousand).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The resource limits of one call.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Linear memory in bytes (summed over the component's memories).
    pub memory_bytes: u64,
    /// Wall time of the whole call, instantiation included.
    pub timeout: Duration,
    /// Fuel units (roughly wasm instructions); `None` runs unmetered.
    pub fuel: Option<u64>,
    /// Bytes of records (keys plus values) or output bytes.
    pub output_bytes: u64,
    /// Bytes of log kept.
    pub log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            fuel: None,
            output_bytes: DEFAULT_OUTPUT_BYTES,
            log_bytes: DEFAULT_LOG_BYTES,
        }
    }
}

/// A host directory made visible to the guest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (e.g. `/data`).
    pub guest: String,
    /// Whether the guest may write to it.
    pub writable: bool,
}

/// Capabilities granted to a call. The default grants nothing: no files,
/// no network, no environment, a fixed clock and seeded randomness.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Grants {
    /// The host's real wall and monotonic clocks.
    pub clock: bool,
    /// The host's real random source.
    pub random: bool,
    /// TCP, UDP and name lookup, to the addresses `hosts` lists.
    pub network: bool,
    /// Where a guest granted the network may connect (see
    /// [`NetRule`](super::net::NetRule)); none when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<super::net::NetRule>,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Directories the guest may open.
    pub dirs: Vec<DirGrant>,
}

impl Grants {
    /// Names the capabilities `--allow` accepts.
    pub const NAMES: &'static [&'static str] = &["clock", "random", "network", "env"];

    /// The names of the capabilities granted, in [`Grants::NAMES`] order
    /// (directories, which only a local `sandmill exec` grants, aside).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        [self.clock, self.random, self.network, !self.env.is_empty()]
            .into_iter()
            .zip(Self::NAMES)
            .filter_map(|(granted, name)| granted.then_some(*name))
    }
}
