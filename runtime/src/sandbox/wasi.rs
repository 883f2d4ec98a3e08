//! The WASI context of one call: deny by default.
//!
//! wasmtime-wasi hands a guest the host's clocks and randomness unless told
//! otherwise; here a guest sees a fixed wall clock, a monotonic clock that
//! advances one microsecond per reading, and random sources seeded from the
//! call's seed — the same on every run — unless the call grants the real
//! ones. No files, network or environment unless granted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::error::ExecError;
use super::host::LogSink;
use super::limits::Grants;

/// What an ungranted guest reads from the wall clock: 2000-01-01T00:00:00Z.
pub const FIXED_WALL_CLOCK: Duration = Duration::from_secs(946_684_800);

struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        FIXED_WALL_CLOCK
    }
}

/// Advances by one microsecond per reading: deterministic, yet a guest
/// that waits for time to pass does not wait forever.
struct SteppingClock(AtomicU64);

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

pub(crate) fn build(grants: &Grants, seed: u64, log: &LogSink) -> Result<WasiCtx, ExecError> {
    let mut builder = WasiCtxBuilder::new();
    builder.stdout(log.clone()).stderr(log.clone());
    if !grants.clock {
        builder
            .wall_clock(FixedWallClock)
            .monotonic_clock(SteppingClock(AtomicU64::new(0)));
    }
    if !grants.random {
        builder
            .secure_random(StdRng::seed_from_u64(seed))
            .insecure_random(StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed))
            .insecure_random_seed(u128::from(seed));
    }
    if grants.network {
        let rules = std::sync::Arc::new(grants.hosts.clone());
        builder
            .socket_addr_check(move |addr, usage| {
                let allowed = super::net::permits(&rules, addr, usage);
                Box::pin(async move { allowed })
            })
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
    } else {
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
    }
    builder.envs(&grants.env);
    for dir in &grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| ExecError::BadGrant(format!("directory {}: {e}", dir.host.display())))?;
    }
    Ok(builder.build())
}
