//! `cargo bench -p sandmill-runtime`: what the sandbox costs per call.
//!
//! 1. Instantiate + call of the trivial `noop` guest through the sandbox,
//!    next to bare wasmtime on the same module with the same pooling
//!    allocator and an `InstancePre` (sync call, a fresh default WASI
//!    context per call), and the ratio.
//! 2. Word count map+combine throughput in the sandbox, next to the same
//!    rule in native Rust, and the ratio.
//!
//! Both sides run in the same process, interleaved in rounds, and the
//! median round is reported: the machine is shared and noisy, so the ratio
//! is the figure to trust.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandmill_runtime::{Call, Output, Sandbox, SandboxConfig};
use sandmill_test_artifacts as guests;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const ROUNDS: usize = 7;
const CALLS_PER_ROUND: u32 = 2_000;

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // only wants to know that the bench builds and runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { ROUNDS };
    let calls = if quick { 20 } else { CALLS_PER_ROUND };
    let wasm = std::fs::read(guests::NOOP).expect("noop guest built");

    // Bare wasmtime: the same pool shape as the sandbox's.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(64)
        .total_core_instances(64 * 16)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .total_memories(128)
        .total_tables(64 * 16)
        .total_stacks(64)
        .table_elements(100_000);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).expect("engine");
    let component = Component::new(&engine, &wasm).expect("compile");
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("host imports");
    let pre = linker.instantiate_pre(&component).expect("pre");
    let runner = component
        .get_export_index(None, "sandmill:guest/runner@0.2.0")
        .expect("runner");
    let run = component
        .get_export_index(Some(&runner), "run")
        .expect("run");
    let bare_call = || {
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let instance = pre.instantiate(&mut store).expect("instantiate");
        let f = instance
            .get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut store, &run)
            .expect("typed");
        let (out,) = f.call(&mut store, (b"x",)).expect("call");
        assert_eq!(out.expect("ok"), b"x");
    };

    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let module = sandbox.load(&wasm).expect("load");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let sandbox_calls = |n: u32| {
        runtime.block_on(async {
            for _ in 0..n {
                let outcome = sandbox.call(&module, Call::task(b"x".to_vec())).await;
                assert_eq!(outcome.result, Ok(Output::Bytes(b"x".to_vec())));
            }
        })
    };

    // Warm up both.
    for _ in 0..calls / 4 {
        bare_call();
    }
    sandbox_calls(calls / 4);
    let (mut bare, mut sand) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..calls {
            bare_call();
        }
        bare.push(t.elapsed() / calls);
        let t = Instant::now();
        sandbox_calls(calls);
        sand.push(t.elapsed() / calls);
    }
    let (bare, sand) = (median(bare), median(sand));
    println!("instantiate + call of `noop` (median of {rounds} rounds x {calls} calls):");
    println!(
        "  bare wasmtime (pooling, InstancePre, fresh WASI ctx, sync): {:>8.1} us/call",
        micros(bare)
    );
    println!(
        "  sandmill sandbox (limits, log capture, deterministic WASI): {:>8.1} us/call",
        micros(sand)
    );
    println!(
        "  ratio sandbox / bare: {:.2}x",
        sand.as_secs_f64() / bare.as_secs_f64()
    );

    // Word count throughput: sandbox map+combine vs the same rule natively.
    let text = generate_text(if quick { 64 << 10 } else { 8 << 20 });
    let wc = sandbox
        .load(&std::fs::read(guests::WORDCOUNT).expect("wordcount"))
        .expect("load");
    let (mut native, mut guest) = (Vec::new(), Vec::new());
    for _ in 0..rounds.min(5) {
        let t = Instant::now();
        let counts = native_wordcount(&text);
        native.push(t.elapsed());
        let t = Instant::now();
        let outcome = runtime.block_on(sandbox.call(&wc, Call::map(text.clone())));
        guest.push(t.elapsed());
        match outcome.result {
            Ok(Output::Records(records)) => assert_eq!(records.len(), counts),
            other => panic!("{other:?}"),
        }
    }
    let mb = text.len() as f64 / 1e6;
    let (native, guest) = (median(native), median(guest));
    println!(
        "word count of {mb:.1} MB (map + combine, median of {} runs):",
        rounds.min(5)
    );
    println!(
        "  native Rust, same rule:   {:>8.1} MB/s",
        mb / native.as_secs_f64()
    );
    println!(
        "  sandbox map + combine:    {:>8.1} MB/s",
        mb / guest.as_secs_f64()
    );
    println!(
        "  ratio native / sandbox: {:.2}x",
        guest.as_secs_f64() / native.as_secs_f64()
    );
}

/// Zipf-ish English-like text from a fixed vocabulary, deterministic.
fn generate_text(bytes: usize) -> Vec<u8> {
    let vocabulary: Vec<String> = (0..5_000usize)
        .map(|i| {
            let stem: String = [i % 26, i / 26 % 26, i / 676]
                .iter()
                .map(|d| char::from(b'a' + *d as u8))
                .collect();
            format!("{stem}{}", ["", "s", "ed", "é", "ß"][i % 5])
        })
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(bytes + 64);
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let rank = (state % 5_000) as usize * ((state >> 32) % 5_000) as usize / 5_000;
        out.extend_from_slice(vocabulary[rank].as_bytes());
        out.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out
}

fn native_wordcount(text: &[u8]) -> usize {
    let mut counts = BTreeMap::<&str, u64>::new();
    for chunk in text.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                *counts.entry(word).or_default() += 1;
            }
        }
    }
    counts.len()
}
