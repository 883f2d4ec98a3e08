//! `sandmill exec`: one call of a module, run in this process.
//!
//! Prints what the call produced on stdout — `key value` lines for map and
//! reduce, the output bytes otherwise — and the guest's log on stderr. A
//! failed call prints one line naming the classified reason and exits 2.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::Args;
use sandmill_runtime::records::parse_groups;
use sandmill_runtime::sandbox::{DEFAULT_MAX_MODULE_BYTES, DirGrant};
use sandmill_runtime::{Call, CallKind, Grants, Limits, Output, Sandbox, SandboxConfig};

use super::out::tell;

/// Exit code of a call that ran and failed (2), as opposed to a usage or
/// setup error (1).
const EXIT_CALL_FAILED: u8 = 2;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The module: a WebAssembly component built with sandmill-sdk.
    module: PathBuf,

    /// Which function to call: map, reduce, preprocess or task.
    #[arg(long, value_parser = parse_kind)]
    kind: CallKind,

    /// The input file, or `-` for stdin. A reduce reads `key value` lines.
    #[arg(long, default_value = "-")]
    input: String,

    /// Parameters as a JSON document, read by the guest's `ctx.params()`.
    #[arg(long, default_value = "{}")]
    params: String,

    /// Memory limit (e.g. 64MiB).
    #[arg(long, default_value_t = ByteSize(sandmill_runtime::sandbox::DEFAULT_MEMORY_BYTES))]
    memory: ByteSize,

    /// Wall-time limit (e.g. 5s, 500ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    timeout: Duration,

    /// Fuel limit (about one unit per wasm instruction); unmetered if absent.
    #[arg(long)]
    fuel: Option<u64>,

    /// Limit on the bytes of records or output.
    #[arg(long, default_value_t = ByteSize(sandmill_runtime::sandbox::DEFAULT_OUTPUT_BYTES))]
    output_limit: ByteSize,

    /// Limit on the bytes of log kept.
    #[arg(long, default_value_t = ByteSize(sandmill_runtime::sandbox::DEFAULT_LOG_BYTES))]
    log_limit: ByteSize,

    /// Capabilities to grant: clock, random, network, env (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(Grants::NAMES))]
    allow: Vec<String>,

    /// A host directory the guest may read, as HOST[:GUEST] (GUEST defaults to HOST).
    #[arg(long, value_name = "HOST[:GUEST]")]
    dir: Vec<String>,

    /// An environment variable for the guest, as KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,

    /// For a map: print the raw records instead of running the module's combine.
    #[arg(long)]
    no_combine: bool,

    /// Seed of the guest's randomness when `random` is not granted.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Name the guest sees for its input (defaults to the input's file name).
    #[arg(long)]
    input_name: Option<String>,

    /// Where compiled modules are cached.
    #[arg(long, env = "SANDMILL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compiled modules kept in the cache; past it the least recently
    /// used go.
    #[arg(long, env = "SANDMILL_MAX_CACHE", default_value_t = ByteSize(sandmill_runtime::sandbox::DEFAULT_MAX_CACHE_BYTES))]
    max_cache: ByteSize,

    /// Largest module accepted.
    #[arg(long, default_value_t = ByteSize(DEFAULT_MAX_MODULE_BYTES as u64))]
    max_module_size: ByteSize,
}

fn parse_kind(name: &str) -> Result<CallKind, String> {
    CallKind::parse(name)
        .ok_or_else(|| format!("`{name}` is not one of map, reduce, preprocess, task"))
}

pub(super) fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sandmill").join("modules"))
}

fn grants(args: &ExecArgs) -> anyhow::Result<Grants> {
    let mut grants = Grants::default();
    for name in &args.allow {
        match name.as_str() {
            "clock" => grants.clock = true,
            "random" => grants.random = true,
            "network" => {
                grants.network = true;
                grants.hosts = vec![sandmill_runtime::sandbox::net::NetRule::Any];
            }
            "env" => grants.env.extend(std::env::vars()),
            // clap checked the names against Grants::NAMES.
            other => bail!("unknown capability `{other}`"),
        }
    }
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair}: expected KEY=VALUE"))?;
        grants.env.push((key.to_owned(), value.to_owned()));
    }
    for dir in &args.dir {
        let (host, guest) = match dir.split_once(':') {
            Some((host, guest)) => (host, guest),
            None => (dir.as_str(), dir.as_str()),
        };
        grants.dirs.push(DirGrant {
            host: host.into(),
            guest: guest.to_owned(),
            writable: false,
        });
    }
    Ok(grants)
}

fn read_input(input: &str) -> anyhow::Result<Vec<u8>> {
    if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
        return Ok(bytes);
    }
    std::fs::read(input).with_context(|| format!("cannot read input {input}"))
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    serde_json::from_str::<serde_json::Value>(&args.params)
        .with_context(|| format!("--params is not valid JSON: {}", args.params))?;
    let grants = grants(&args)?;
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let input = read_input(&args.input)?;

    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache_dir.clone().or_else(default_cache_dir),
        max_module_bytes: usize::try_from(args.max_module_size.0).unwrap_or(usize::MAX),
        max_cache_bytes: args.max_cache.0,
        ..SandboxConfig::default()
    })?;
    let module = match sandbox.load(&wasm) {
        Ok(module) => module,
        Err(error) => {
            tell!(
                "error[{}]: {}: {error}",
                error.reason(),
                args.module.display()
            );
            return Ok(ExitCode::from(EXIT_CALL_FAILED));
        }
    };

    let mut call = match args.kind {
        CallKind::Map => Call::map(input),
        CallKind::Reduce => Call::reduce(
            parse_groups(&input)
                .map_err(|e| anyhow::anyhow!(e))
                .context("reduce input")?
                .into_iter(),
        ),
        CallKind::Preprocess => Call::preprocess(input),
        CallKind::Task => Call::task(input),
    };
    call.combine = !args.no_combine;
    call.params = args.params.clone();
    call.input_name = args.input_name.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.input)
            .file_name()
            .map_or_else(|| args.input.clone(), |n| n.to_string_lossy().into_owned())
    });
    call.seed = args.seed;
    call.grants = grants;
    call.limits = Limits {
        memory_bytes: args.memory.0,
        timeout: args.timeout,
        fuel: args.fuel,
        output_bytes: args.output_limit.0,
        log_bytes: args.log_limit.0,
    };

    // Time and I/O both: a guest granted the network does its sockets on
    // this runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(sandbox.call(&module, call));

    super::out::stderr(&outcome.log);
    match outcome.result {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            let written = match output {
                Output::Records(records) => records.write_lines(&mut stdout),
                Output::Bytes(bytes) => stdout.write_all(&bytes),
                // exec never asks for a partitioned map.
                Output::Runs(..) => Ok(()),
            }
            .and_then(|()| stdout.flush());
            super::out::quiet_on_closed_pipe(written).context("cannot write the output")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            tell!("error[{}]: {error}", error.reason());
            Ok(ExitCode::from(EXIT_CALL_FAILED))
        }
    }
}
