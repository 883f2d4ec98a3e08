//! The sandbox: runs one guest call in a fresh wasmtime instance under hard
//! limits, and classifies every failure.
//!
//! One [`Sandbox`] per process. It owns a wasmtime engine with the pooling
//! allocator and epoch interruption (a second, fuel-metering engine is made
//! only when a call asks for fuel), and a module cache keyed by the module's
//! sha256: in memory (an `InstancePre` per module, so a call only
//! instantiates) and on disk (precompiled artifacts, so a module is compiled
//! once per machine).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandmill_runtime::ExecError> {
//! use sandmill_runtime::{Call, Sandbox, SandboxConfig, Output};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let module = sandbox.load(&std::fs::read("noop.wasm").unwrap())?;
//! let outcome = sandbox.call(&module, Call::task(b"hello".to_vec())).await;
//! match outcome.result {
//!     Ok(Output::Bytes(bytes)) => assert_eq!(bytes, b"hello"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod host;
mod interrupt;
mod limits;
pub mod net;
mod wasi;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use error::{ExecError, TrapKind};
use error::{FailureContext, classify, one_line};
use host::{HostState, LogSink, MemoryLimiter};
pub use interrupt::Interrupt;
pub use limits::*;
pub use wasi::FIXED_WALL_CLOCK;

use crate::records::Records;

/// How often the epoch advances; a timeout is enforced to within one tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Process-wide sandbox settings (per-call limits live in [`Limits`]).
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Where precompiled modules are kept; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Instances alive at once (pool slots).
    pub max_instances: u32,
    /// Largest memory limit a call may set.
    pub max_memory_ceiling: u64,
    /// The grants this sandbox honours (`worker --allow-grants`, names
    /// from [`Grants::NAMES`]); a call asking for another fails with
    /// `bad-grant`, which is retried (another worker may allow it).
    pub allowed_grants: Vec<String>,
    /// Bytes of modules kept loaded in memory; past it the least recently
    /// used are dropped (and loaded again, from the disk cache, when next
    /// needed).
    pub max_kept_module_bytes: usize,
    /// Bytes of compiled modules kept in `cache_dir`; past it the least
    /// recently used go (a module whose compiled form went is compiled
    /// again when next loaded).
    pub max_cache_bytes: u64,
}

/// Bytes of modules kept loaded by default.
pub const DEFAULT_MAX_KEPT_MODULE_BYTES: usize = 256 << 20;

/// Bytes of compiled modules kept on disk by default.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 8 << 30;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: None,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory_ceiling: DEFAULT_MAX_MEMORY_CEILING,
            allowed_grants: Grants::NAMES.iter().map(|n| (*n).to_owned()).collect(),
            max_kept_module_bytes: DEFAULT_MAX_KEPT_MODULE_BYTES,
            max_cache_bytes: DEFAULT_MAX_CACHE_BYTES,
        }
    }
}

/// Modules kept loaded, the least recently used dropped first past a
/// budget of bytes.
#[derive(Default)]
struct Kept {
    modules: HashMap<[u8; 32], (Module, u64)>,
    bytes: usize,
    clock: u64,
}

impl Kept {
    fn get(&mut self, hash: &[u8; 32]) -> Option<Module> {
        self.clock += 1;
        let now = self.clock;
        self.modules.get_mut(hash).map(|(module, used)| {
            *used = now;
            module.clone()
        })
    }

    /// Keeps `module`, then drops others until the rest fit `budget` (the
    /// newest always stays).
    fn keep(&mut self, module: Module, budget: usize) {
        self.clock += 1;
        let hash = module.data.hash;
        let size = module.data.bytes.len();
        if let Some((old, _)) = self.modules.insert(hash, (module, self.clock)) {
            self.bytes -= old.data.bytes.len();
        }
        self.bytes += size;
        while self.bytes > budget && self.modules.len() > 1 {
            let Some(oldest) = self
                .modules
                .iter()
                .filter(|(h, _)| **h != hash)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some((dropped, _)) = self.modules.remove(&oldest) {
                self.bytes -= dropped.data.bytes.len();
            }
        }
    }
}

/// The kind of guest function a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `mapper.map`, optionally followed by `combiner.combine`.
    Map,
    /// `reducer.reduce`, once per key.
    Reduce,
    /// `preprocessor.preprocess`.
    Preprocess,
    /// `runner.run`.
    Task,
}

impl CallKind {
    /// The name users type (`--kind map`).
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Map => "map",
            CallKind::Reduce => "reduce",
            CallKind::Preprocess => "preprocess",
            CallKind::Task => "task",
        }
    }

    /// Parses a name users type.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Every kind.
    pub const ALL: [CallKind; 4] = [Self::Map, Self::Reduce, Self::Preprocess, Self::Task];
}

/// A name that is not a [`CallKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not one of map, reduce, preprocess, task")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for CallKind {
    type Err = UnknownKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CallKind::parse(name).ok_or_else(|| UnknownKind(name.to_owned()))
    }
}

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An export a module may have: interface and function name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Export {
    Map,
    Combine,
    Reduce,
    Preprocess,
    Run,
}

impl Export {
    const ALL: [Export; 5] = [
        Export::Map,
        Export::Combine,
        Export::Reduce,
        Export::Preprocess,
        Export::Run,
    ];

    fn path(self) -> (&'static str, &'static str) {
        match self {
            Export::Map => ("sandmill:guest/mapper@0.2.0", "map"),
            Export::Combine => ("sandmill:guest/combiner@0.2.0", "combine"),
            Export::Reduce => ("sandmill:guest/reducer@0.2.0", "reduce"),
            Export::Preprocess => ("sandmill:guest/preprocessor@0.2.0", "preprocess"),
            Export::Run => ("sandmill:guest/runner@0.2.0", "run"),
        }
    }

    fn of(kind: CallKind) -> Export {
        match kind {
            CallKind::Map => Export::Map,
            CallKind::Reduce => Export::Reduce,
            CallKind::Preprocess => Export::Preprocess,
            CallKind::Task => Export::Run,
        }
    }
}

/// A key and an iterator over its values, as a reduce call consumes them.
pub type Group = (Vec<u8>, Box<dyn Iterator<Item = Vec<u8>> + Send>);

/// What a call reads.
pub enum CallInput {
    /// The bytes of one input (map, preprocess, task).
    Bytes(Vec<u8>),
    /// Keys in order with their values (reduce).
    Groups(Box<dyn Iterator<Item = Group> + Send>),
}

/// One call of a guest function.
pub struct Call {
    /// Which function.
    pub kind: CallKind,
    /// What it reads.
    pub input: CallInput,
    /// For a map: run the module's `combine` (if it has one) over the
    /// sorted output, as a map task of a MapReduce job does.
    pub combine: bool,
    /// Parameters as JSON, returned by `host.params`.
    pub params: String,
    /// The input's name, returned by `host.input-name`.
    pub input_name: String,
    /// Resource limits.
    pub limits: Limits,
    /// Capabilities.
    pub grants: Grants,
    /// Seeds the guest's randomness when `random` is not granted.
    pub seed: u64,
    /// For a map of a map-reduce job: partition its output into sorted
    /// runs in files, spilling past a buffer (see [`crate::shuffle`]).
    pub spill: Option<SpillTo>,
    /// Which attempt of its task this is (from 0), told to the guest.
    pub attempt: u32,
    /// Where the guest's `host.progress` calls go while it runs (the
    /// latest one wins); the last one is also in [`Outcome::progress`].
    pub progress: Option<ProgressSink>,
    /// Stops the call when thrown (its job ended early): it fails with
    /// [`ExecError::Cancelled`].
    pub interrupt: Option<Interrupt>,
}

/// Told each of a running guest's `host.progress` calls, `(done, total)`,
/// as it makes them (so it must be quick).
pub type ProgressSink = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Where and how a map's output is spilled as sorted runs.
#[derive(Clone, Debug)]
pub struct SpillTo {
    /// Partitions (reducers).
    pub partitions: u32,
    /// Key and value bytes held before a spill.
    pub buffer_bytes: u64,
    /// A folder for the run files (it must exist; the caller removes it).
    pub dir: PathBuf,
}

impl Call {
    fn with_input(kind: CallKind, input: CallInput) -> Self {
        Call {
            kind,
            input,
            combine: true,
            params: "{}".into(),
            input_name: "-".into(),
            limits: Limits::default(),
            grants: Grants::default(),
            seed: 0,
            spill: None,
            attempt: 0,
            progress: None,
            interrupt: None,
        }
    }

    /// A map over one input (combining its output if the module can).
    pub fn map(input: Vec<u8>) -> Self {
        Self::with_input(CallKind::Map, CallInput::Bytes(input))
    }

    /// A reduce over keys in order.
    pub fn reduce(groups: impl Iterator<Item = Group> + Send + 'static) -> Self {
        Self::with_input(CallKind::Reduce, CallInput::Groups(Box::new(groups)))
    }

    /// A preprocessor over one input.
    pub fn preprocess(input: Vec<u8>) -> Self {
        Self::with_input(CallKind::Preprocess, CallInput::Bytes(input))
    }

    /// A plain task over one input.
    pub fn task(input: Vec<u8>) -> Self {
        Self::with_input(CallKind::Task, CallInput::Bytes(input))
    }

    /// The same call with these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same call with these grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// The same call with these JSON parameters.
    pub fn with_params(mut self, params: impl Into<String>) -> Self {
        self.params = params.into();
        self
    }

    /// The same call, partitioning its output into spilled sorted runs.
    pub fn with_spill(mut self, spill: SpillTo) -> Self {
        self.spill = Some(spill);
        self
    }

    /// The same call with this input name.
    pub fn with_input_name(mut self, name: impl Into<String>) -> Self {
        self.input_name = name.into();
        self
    }
}

/// What a call produced.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Records (map, reduce): sorted by key when combined.
    Records(Records),
    /// Bytes (preprocess, task).
    Bytes(Vec<u8>),
    /// A partitioned map's sorted runs (in files), and how many records
    /// they hold.
    Runs(Vec<crate::shuffle::RunFile>, u64),
}

impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Everything known about a finished call, failed or not: a failed call's
/// log and counters are what the user needs to see why.
#[derive(Debug)]
pub struct Outcome {
    /// The output, or why there is none.
    pub result: Result<Output, ExecError>,
    /// Log lines, stdout and stderr, in order, capped by the log limit.
    pub log: Vec<u8>,
    /// Whether the log was cut at the limit.
    pub log_truncated: bool,
    /// Counters the guest reported.
    pub counters: BTreeMap<String, i64>,
    /// The last progress the guest reported.
    pub progress: Option<(u64, u64)>,
    /// Fuel consumed, when metered.
    pub fuel_used: Option<u64>,
    /// The largest size the guest's linear memory grew to, in bytes.
    pub memory_peak: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// Counts of how modules were made ready, to check the caches work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled by cranelift.
    pub compiled: u64,
    /// Modules loaded precompiled from the disk cache.
    pub from_disk: u64,
}

/// A module ready to run: validated, compiled, its exports found.
#[derive(Clone)]
pub struct Module {
    data: Arc<ModuleData>,
}

struct ModuleData {
    hash: [u8; 32],
    bytes: Arc<[u8]>,
    plain: OnceLock<Arc<Loaded>>,
    metered: OnceLock<Arc<Loaded>>,
}

impl Module {
    /// The module's sha256, hex-encoded.
    pub fn hash(&self) -> String {
        hex::encode(self.data.hash)
    }

    /// Whether the module can run calls of this kind.
    pub fn exports(&self, kind: CallKind) -> bool {
        self.data
            .plain
            .get()
            .is_some_and(|l| l.exports[Export::of(kind) as usize].is_some())
    }
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("hash", &self.hash())
            .finish()
    }
}

/// A module compiled for one engine.
struct Loaded {
    pre: InstancePre<HostState>,
    exports: [Option<ComponentExportIndex>; 5],
}

/// An engine and the linker that provides the host imports.
struct Flavor {
    name: &'static str,
    engine: Engine,
    linker: Linker<HostState>,
}

impl Flavor {
    fn new(config: &SandboxConfig, metered: bool) -> Result<Flavor, ExecError> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(16))
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(16))
            .total_stacks(instances)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(usize::try_from(config.max_memory_ceiling).unwrap_or(usize::MAX));
        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(metered)
            .wasm_component_model(true);
        let engine = Engine::new(&wasm).map_err(|e| ExecError::Host(one_line(&e)))?;
        spawn_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s))
            .map_err(|e| ExecError::Host(one_line(&e)))?;
        Ok(Flavor {
            name: if metered { "fuel" } else { "plain" },
            engine,
            linker,
        })
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sandmill-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        // Without the ticker no timeout could fire; a process that cannot
        // start one thread cannot run guests either.
        .expect("start the epoch ticker thread");
}

/// The sandbox. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    /// The key of the artifacts' tags in the cache directory (none: no
    /// disk cache).
    cache_key: Option<Vec<u8>>,
    plain: Flavor,
    metered: OnceLock<Result<Flavor, ExecError>>,
    modules: Mutex<Kept>,
    compiled: AtomicU64,
    from_disk: AtomicU64,
}

/// The first bytes of a component binary: magic, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// The first bytes of a core module: magic, version 1, layer 0.
const CORE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Rejects what is plainly not a component, with a message that says what
/// it is instead.
fn check_header(bytes: &[u8]) -> Result<(), ExecError> {
    if bytes.len() < 8 || bytes[..4] != COMPONENT_HEADER[..4] {
        return Err(ExecError::InvalidModule(
            "not a WebAssembly file (it does not start with \\0asm)".into(),
        ));
    }
    if bytes[..8] == CORE_HEADER {
        return Err(ExecError::InvalidModule(
            "this is a core WebAssembly module, not a component; build the guest with \
             `--target wasm32-wasip2` and sandmill-sdk"
                .into(),
        ));
    }
    if bytes[..8] != COMPONENT_HEADER {
        return Err(ExecError::InvalidModule(format!(
            "unsupported WebAssembly version {:02x?}",
            &bytes[4..8]
        )));
    }
    Ok(())
}

impl Sandbox {
    /// Makes the engine (with its pool and epoch ticker) and the linker.
    pub fn new(config: SandboxConfig) -> Result<Self, ExecError> {
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                ExecError::Host(format!("cannot create cache dir {}: {e}", dir.display()))
            })?;
        }
        let plain = Flavor::new(&config, false)?;
        let cache_key = config.cache_dir.as_deref().and_then(cache::key);
        Ok(Sandbox {
            inner: Arc::new(Inner {
                cache_key,
                config,
                plain,
                metered: OnceLock::new(),
                modules: Mutex::default(),
                compiled: AtomicU64::new(0),
                from_disk: AtomicU64::new(0),
            }),
        })
    }

    /// How many modules are kept loaded now (see
    /// [`SandboxConfig::max_kept_module_bytes`]).
    pub fn kept_modules(&self) -> usize {
        self.modules().modules.len()
    }

    /// How modules were made ready so far.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.inner.compiled.load(Ordering::Relaxed),
            from_disk: self.inner.from_disk.load(Ordering::Relaxed),
        }
    }

    /// Validates and prepares a module. Loading the same bytes again is a
    /// hash and a map lookup; a module seen by any process sharing the cache
    /// directory is not compiled again.
    pub fn load(&self, bytes: &[u8]) -> Result<Module, ExecError> {
        let limit = self.inner.config.max_module_bytes;
        if bytes.len() > limit {
            return Err(ExecError::ModuleTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        check_header(bytes)?;
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(module) = self.modules().get(&hash) {
            crate::metrics::WORKER.module_load("memory");
            return Ok(module);
        }
        let module = Module {
            data: Arc::new(ModuleData {
                hash,
                bytes: bytes.into(),
                plain: OnceLock::new(),
                metered: OnceLock::new(),
            }),
        };
        self.loaded(&module, false)?;
        self.modules()
            .keep(module.clone(), self.inner.config.max_kept_module_bytes);
        Ok(module)
    }

    fn modules(&self) -> std::sync::MutexGuard<'_, Kept> {
        // The map holds no invariant a panic could break mid-update.
        self.inner.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flavor(&self, metered: bool) -> Result<&Flavor, ExecError> {
        if !metered {
            return Ok(&self.inner.plain);
        }
        self.inner
            .metered
            .get_or_init(|| Flavor::new(&self.inner.config, true))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The module compiled for the plain or the metered engine.
    fn loaded(&self, module: &Module, metered: bool) -> Result<Arc<Loaded>, ExecError> {
        let slot = if metered {
            &module.data.metered
        } else {
            &module.data.plain
        };
        if let Some(loaded) = slot.get() {
            return Ok(loaded.clone());
        }
        let flavor = self.flavor(metered)?;
        let component = self.component(flavor, &module.data)?;
        let pre = flavor.linker.instantiate_pre(&component).map_err(|e| {
            ExecError::InvalidModule(format!(
                "it imports what Sandmill does not provide: {}",
                one_line(&e)
            ))
        })?;
        let exports = Export::ALL.map(|export| {
            let (interface, func) = export.path();
            let interface = component.get_export_index(None, interface)?;
            component.get_export_index(Some(&interface), func)
        });
        if exports.iter().all(Option::is_none) {
            return Err(ExecError::InvalidModule(
                "it exports no Sandmill function (map, combine, reduce, preprocess or task); \
                 is it built with sandmill-sdk?"
                    .into(),
            ));
        }
        let loaded = Arc::new(Loaded { pre, exports });
        Ok(slot.get_or_init(|| loaded).clone())
    }

    fn component(&self, flavor: &Flavor, data: &ModuleData) -> Result<Component, ExecError> {
        let disk = self.inner.cache_key.as_ref().and_then(|key| {
            let dir = self.inner.config.cache_dir.as_ref()?;
            Some((key, cache::artifact_path(dir, &data.hash, flavor.name)))
        });
        if let Some((key, path)) = &disk
            && let Some(component) = cache::read(&flavor.engine, key, flavor.name, &data.hash, path)
        {
            self.inner.from_disk.fetch_add(1, Ordering::Relaxed);
            crate::metrics::WORKER.module_load("disk");
            return Ok(component);
        }
        let began = Instant::now();
        let component = Component::new(&flavor.engine, &data.bytes)
            .map_err(|e| ExecError::InvalidModule(one_line(&e)))?;
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        crate::metrics::WORKER
            .compile_seconds
            .observe(began.elapsed().as_secs_f64());
        crate::metrics::WORKER.module_load("compiled");
        if let Some((key, path)) = &disk {
            cache::write(&component, key, flavor.name, &data.hash, path);
            if let Some(dir) = &self.inner.config.cache_dir {
                cache::prune(dir, self.inner.config.max_cache_bytes, path);
            }
        }
        Ok(component)
    }

    /// Runs one call in a fresh instance. Never panics on guest behaviour:
    /// every failure comes back classified in [`Outcome::result`].
    #[tracing::instrument(skip_all, fields(module = %module.hash(), kind = call.kind.name()))]
    pub async fn call(&self, module: &Module, call: Call) -> Outcome {
        let start = Instant::now();
        let log = LogSink::new(call.limits.log_bytes);
        let mut outcome = Outcome {
            result: Err(ExecError::Host("not run".into())),
            log: Vec::new(),
            log_truncated: false,
            counters: BTreeMap::new(),
            progress: None,
            fuel_used: None,
            memory_peak: 0,
            elapsed: Duration::ZERO,
        };
        let kind = call.kind.name();
        outcome.result = self.run(module, call, &log, &mut outcome).await;
        (outcome.log, outcome.log_truncated) = log.take();
        outcome.elapsed = start.elapsed();
        crate::metrics::WORKER.call(
            kind,
            outcome.result.is_ok(),
            outcome.elapsed,
            outcome.fuel_used,
            outcome.memory_peak,
        );
        if let Err(error) = &outcome.result {
            tracing::debug!(reason = %error.reason(), %error, "call failed");
        }
        outcome
    }

    async fn run(
        &self,
        module: &Module,
        call: Call,
        log: &LogSink,
        outcome: &mut Outcome,
    ) -> Result<Output, ExecError> {
        let Call {
            kind,
            input,
            combine,
            params,
            input_name,
            limits,
            grants,
            seed,
            spill,
            attempt,
            progress: progress_sink,
            interrupt,
        } = call;
        let metered = limits.fuel.is_some();
        let flavor = self.flavor(metered)?;
        let loaded = self.loaded(module, metered)?;
        let export = loaded.exports[Export::of(kind) as usize].ok_or_else(|| {
            let (interface, func) = Export::of(kind).path();
            ExecError::MissingExport {
                kind: kind.name(),
                export: format!("{interface}#{func}"),
            }
        })?;
        let combine = if kind == CallKind::Map && combine {
            loaded.exports[Export::Combine as usize]
        } else {
            None
        };
        if let Some(name) = grants
            .names()
            .find(|name| !self.inner.config.allowed_grants.iter().any(|a| a == name))
        {
            return Err(ExecError::BadGrant(format!(
                "this worker does not allow the `{name}` grant (worker --allow-grants)"
            )));
        }
        let state = HostState {
            wasi: wasi::build(&grants, seed, log)?,
            table: Default::default(),
            limiter: MemoryLimiter {
                limit: limits.memory_bytes,
                peak: 0,
            },
            log: log.clone(),
            params,
            input_name,
            records: Records::new(),
            output_limit: limits.output_bytes,
            spill: spill.map(|to| host::Spilling {
                spiller: crate::shuffle::Spiller::new(to.partitions, to.dir),
                buffer: to.buffer_bytes,
                emitted: 0,
            }),
            attempt,
            values: None,
            counters: BTreeMap::new(),
            progress: None,
            progress_sink,
            panic: None,
        };
        let mut store = Store::new(&flavor.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.timeout.as_millis() / EPOCH_TICK.as_millis() + 1;
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
        match &interrupt {
            None => {
                store.set_epoch_deadline(ticks);
                store.epoch_deadline_trap();
            }
            // Looked at every tick: a thrown switch stops the guest, and
            // the timeout is counted here in ticks.
            Some(switch) => {
                let switch = switch.clone();
                let mut left = ticks;
                store.epoch_deadline_callback(move |_| {
                    if switch.is_set() {
                        return Err(wasmtime::Error::new(error::HostAbort(ExecError::Cancelled)));
                    }
                    left = left.saturating_sub(1);
                    Ok(if left == 0 {
                        wasmtime::UpdateDeadline::Interrupt
                    } else {
                        wasmtime::UpdateDeadline::Continue(1)
                    })
                });
                store.set_epoch_deadline(1);
            }
        }
        if let Some(fuel) = limits.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| ExecError::Host(one_line(&e)))?;
        }

        // The epoch deadline stops a guest that computes; this timer stops
        // one that waits in the host (a WASI sleep or poll).
        let run = invoke(&mut store, &loaded.pre, kind, export, combine, input);
        let interrupted = async {
            match &interrupt {
                Some(switch) => switch.wait().await,
                None => std::future::pending().await,
            }
        };
        let run = async {
            tokio::select! {
                ran = tokio::time::timeout(limits.timeout, run) => ran,
                () = interrupted => Ok(Err(wasmtime::Error::new(error::HostAbort(ExecError::Cancelled)))),
            }
        };
        let result = match run.await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                let cx = FailureContext {
                    panic: store.data_mut().panic.take(),
                    timeout: limits.timeout,
                    fuel: limits.fuel,
                };
                Err(classify(error, cx))
            }
            Err(_elapsed) => Err(ExecError::Timeout(limits.timeout)),
        };
        if let Some(fuel) = limits.fuel {
            outcome.fuel_used = store.get_fuel().ok().map(|left| fuel - left);
        }
        let state = store.data_mut();
        outcome.memory_peak = state.limiter.peak;
        outcome.counters = std::mem::take(&mut state.counters);
        outcome.progress = state.progress;
        let output = result?;
        if let Output::Bytes(bytes) = &output
            && bytes.len() as u64 > limits.output_bytes
        {
            return Err(ExecError::OutputTooLarge {
                limit: limits.output_bytes,
            });
        }
        Ok(output)
    }
}

type GuestResult<T> = Result<T, String>;

/// Hands keys and their values to a guest's `combine` or `reduce` in
/// batches of groups (see the WIT): one call per batch of about
/// [`host::VALUES_BATCH_BYTES`], not one per key. A key whose values do not
/// fit ends its batch; the guest reads the rest with `next-values`.
async fn feed_groups(
    store: &mut Store<HostState>,
    func: &wasmtime::component::TypedFunc<(&[u8],), (GuestResult<()>,)>,
    groups: impl Iterator<Item = Group>,
) -> wasmtime::Result<Result<(), ExecError>> {
    let limit = host::VALUES_BATCH_BYTES;
    let mut batch: Vec<u8> = Vec::new();
    let mut values_frames: Vec<u8> = Vec::new();
    for (key, values) in groups {
        let mut values = values.peekable();
        values_frames.clear();
        let mut count: u32 = 0;
        for value in values.by_ref() {
            crate::records::encode_values([value.as_slice()], &mut values_frames);
            count += 1;
            if batch.len() + values_frames.len() >= limit {
                break;
            }
        }
        let more = values.peek().is_some();
        crate::records::encode_values([key.as_slice()], &mut batch);
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&count.to_le_bytes());
        header[4] = u8::from(more);
        crate::records::encode_values([&header[..]], &mut batch);
        batch.extend_from_slice(&values_frames);
        if more || batch.len() >= limit {
            store.data_mut().values = more.then(|| Box::new(values) as host::ValueIter);
            let (result,) = func.call_async(&mut *store, (&batch,)).await?;
            store.data_mut().values = None;
            if let Err(message) = result {
                return Ok(Err(ExecError::Guest(message)));
            }
            batch.clear();
        }
    }
    if !batch.is_empty() {
        let (result,) = func.call_async(&mut *store, (&batch,)).await?;
        if let Err(message) = result {
            return Ok(Err(ExecError::Guest(message)));
        }
    }
    Ok(Ok(()))
}

/// A map's output: its records, or, when partitioned, the last spill and
/// every run written.
fn finish_map(state: &mut HostState) -> Result<Output, ExecError> {
    let mut records = std::mem::take(&mut state.records);
    let Some(mut spilling) = state.spill.take() else {
        return Ok(Output::Records(records));
    };
    spilling
        .spiller
        .spill(&mut records)
        .map_err(|e| ExecError::Host(format!("spilling the map's output: {e}")))?;
    let (runs, n) = spilling.spiller.finish();
    Ok(Output::Runs(runs, n))
}

/// Instantiates and calls; a guest's own error comes back as `Ok(Err(..))`,
/// anything wasmtime raised as `Err(..)` for [`classify`].
async fn invoke(
    store: &mut Store<HostState>,
    pre: &InstancePre<HostState>,
    kind: CallKind,
    export: ComponentExportIndex,
    combine: Option<ComponentExportIndex>,
    input: CallInput,
) -> wasmtime::Result<Result<Output, ExecError>> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let guest = |r: GuestResult<()>| r.map_err(ExecError::Guest);
    match (kind, input) {
        (CallKind::Map, CallInput::Bytes(input)) => {
            let map =
                instance.get_typed_func::<(&[u8],), (GuestResult<()>,)>(&mut *store, &export)?;
            let (result,) = map.call_async(&mut *store, (&input,)).await?;
            if let Err(e) = guest(result) {
                return Ok(Err(e));
            }
            let spilled = store
                .data()
                .spill
                .as_ref()
                .is_some_and(|s| s.spiller.spills() > 0);
            // A map that spilled is not combined on the host: its runs
            // are sorted, and the reduce folds them.
            let combine = combine.filter(|_| !spilled);
            let mut records = std::mem::take(&mut store.data_mut().records);
            let Some(combine) = combine else {
                store.data_mut().records = records;
                return Ok(finish_map(store.data_mut()));
            };
            records.sort_by_key();
            if let Some(spilling) = &mut store.data_mut().spill {
                // The limit bounds what the combine writes, not both.
                spilling.emitted = 0;
            }
            let combine =
                instance.get_typed_func::<(&[u8],), (GuestResult<()>,)>(&mut *store, &combine)?;
            let groups = records.groups().map(|(key, values)| {
                let values: Vec<Vec<u8>> = values.into_iter().map(<[u8]>::to_vec).collect();
                (
                    key.to_vec(),
                    Box::new(values.into_iter()) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
                )
            });
            if let Err(e) = feed_groups(store, &combine, groups).await? {
                return Ok(Err(e));
            }
            Ok(finish_map(store.data_mut()))
        }
        (CallKind::Reduce, CallInput::Groups(groups)) => {
            let reduce =
                instance.get_typed_func::<(&[u8],), (GuestResult<()>,)>(&mut *store, &export)?;
            if let Err(e) = feed_groups(store, &reduce, groups).await? {
                return Ok(Err(e));
            }
            Ok(Ok(Output::Records(std::mem::take(
                &mut store.data_mut().records,
            ))))
        }
        (CallKind::Preprocess | CallKind::Task, CallInput::Bytes(input)) => {
            let run = instance
                .get_typed_func::<(&[u8],), (GuestResult<Vec<u8>>,)>(&mut *store, &export)?;
            let (result,) = run.call_async(&mut *store, (&input,)).await?;
            Ok(result.map(Output::Bytes).map_err(ExecError::Guest))
        }
        (kind, _) => Ok(Err(ExecError::Host(format!(
            "a {} call needs {} input",
            kind.name(),
            if kind == CallKind::Reduce {
                "grouped"
            } else {
                "byte"
            }
        )))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(
            matches!(check_header(b"garbage!"), Err(ExecError::InvalidModule(m)) if m.contains("not a WebAssembly file"))
        );
        assert!(
            matches!(check_header(&CORE_HEADER), Err(ExecError::InvalidModule(m)) if m.contains("core WebAssembly module"))
        );
        assert!(check_header(&COMPONENT_HEADER).is_ok());
        assert!(
            matches!(check_header(b"\0asm\x02\0\0\0"), Err(ExecError::InvalidModule(m)) if m.contains("unsupported"))
        );
    }

    #[test]
    fn kinds_parse_their_names() {
        for kind in [
            CallKind::Map,
            CallKind::Reduce,
            CallKind::Preprocess,
            CallKind::Task,
        ] {
            assert_eq!(CallKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(CallKind::parse("combine"), None);
    }
}
