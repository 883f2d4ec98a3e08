//! The sandbox against real guests built from `guest-examples/`: every
//! example does its job, every hostile guest gets its classified error
//! within its limit, and the process goes on to run the next call.

#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::LazyLock;
use std::time::Duration;

use sandmill_runtime::sandbox::{CacheStats, DirGrant};
use sandmill_runtime::{
    Call, ExecError, Grants, Limits, Module, Outcome, Output, Sandbox, SandboxConfig, TrapKind,
};
use sandmill_test_artifacts as guests;

/// One sandbox for the whole test binary, as in a worker process.
static SANDBOX: LazyLock<Sandbox> =
    LazyLock::new(|| Sandbox::new(SandboxConfig::default()).expect("sandbox"));

fn load(path: &str) -> Module {
    SANDBOX
        .load(&std::fs::read(path).expect("guest built"))
        .expect("guest loads")
}

/// Every await in a test sits inside a timeout.
async fn run(module: &Module, call: Call) -> Outcome {
    tokio::time::timeout(Duration::from_secs(60), SANDBOX.call(module, call))
        .await
        .expect("call finished within 60 s")
}

fn records(outcome: &Outcome) -> Vec<(String, String)> {
    match &outcome.result {
        Ok(Output::Records(records)) => records
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

fn bytes(outcome: &Outcome) -> &[u8] {
    match &outcome.result {
        Ok(Output::Bytes(bytes)) => bytes,
        other => panic!(
            "expected bytes, got {other:?}\nlog: {}",
            String::from_utf8_lossy(&outcome.log)
        ),
    }
}

/// After a hostile call, the same process runs a good one.
async fn still_works() {
    let noop = load(guests::NOOP);
    let outcome = run(&noop, Call::task(b"still here".to_vec())).await;
    assert_eq!(bytes(&outcome), b"still here");
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        ..Limits::default()
    }
}

#[tokio::test]
async fn noop_returns_its_input() {
    let noop = load(guests::NOOP);
    let outcome = run(&noop, Call::task(b"hello".to_vec())).await;
    assert_eq!(bytes(&outcome), b"hello");
    assert_eq!(outcome.fuel_used, None);
}

#[tokio::test]
async fn wordcount_maps_combines_and_reduces() {
    let wc = load(guests::WORDCOUNT);
    let text = "the cat and the hat, the end".as_bytes().to_vec();
    let combined = run(&wc, Call::map(text.clone())).await;
    assert_eq!(
        records(&combined),
        [
            ("and", "1"),
            ("cat", "1"),
            ("end", "1"),
            ("hat", "1"),
            ("the", "3")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(combined.counters.get("words"), Some(&7));

    let mut raw = Call::map(text);
    raw.combine = false;
    let raw = run(&wc, raw).await;
    // The map sums inside the guest (in-mapper combining): without the
    // host's combine pass its records are already one per word.
    assert_eq!(records(&raw), records(&combined));

    let groups = vec![
        (b"cat".to_vec(), vec![b"2".to_vec(), b"3".to_vec()]),
        (b"dog".to_vec(), vec![b"1".to_vec()]),
    ];
    let reduce = Call::reduce(groups.into_iter().map(|(k, vs)| {
        (
            k,
            Box::new(vs.into_iter()) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
        )
    }));
    let reduced = run(&wc, reduce).await;
    assert_eq!(
        records(&reduced),
        vec![
            ("cat".to_owned(), "5".to_owned()),
            ("dog".to_owned(), "1".to_owned())
        ]
    );
}

#[tokio::test]
async fn reduce_streams_many_values_of_one_key() {
    let wc = load(guests::WORDCOUNT);
    // 200,000 values: far more than one 64 KiB batch.
    let values = std::iter::repeat_n(b"1".to_vec(), 200_000);
    let reduce = Call::reduce(std::iter::once((
        b"w".to_vec(),
        Box::new(values) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
    )));
    let outcome = run(&wc, reduce).await;
    assert_eq!(
        records(&outcome),
        vec![("w".to_owned(), "200000".to_owned())]
    );
}

#[tokio::test]
async fn indexer_lists_sorted_unique_inputs() {
    let indexer = load(guests::INDEXER);
    let a = run(
        &indexer,
        Call::map(b"apple pie apple".to_vec()).with_input_name("b.txt"),
    )
    .await;
    assert_eq!(
        records(&a),
        vec![
            ("apple".to_owned(), "b.txt".to_owned()),
            ("pie".to_owned(), "b.txt".to_owned())
        ]
    );
    let groups = vec![(
        b"apple".to_vec(),
        vec![b"b.txt".to_vec(), b"a.txt".to_vec(), b"b.txt".to_vec()],
    )];
    let reduce = Call::reduce(groups.into_iter().map(|(k, vs)| {
        (
            k,
            Box::new(vs.into_iter()) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
        )
    }));
    let reduced = run(&indexer, reduce).await;
    assert_eq!(
        records(&reduced),
        vec![("apple".to_owned(), "a.txt,b.txt".to_owned())]
    );
}

#[tokio::test]
async fn grep_takes_its_pattern_as_a_param() {
    let grep = load(guests::GREP);
    let call = Call::map(b"ok\nerror: disk\nfine\nerrors: 2\n".to_vec())
        .with_params(r#"{"pattern":"^error"}"#)
        .with_input_name("log.txt");
    let outcome = run(&grep, call).await;
    let mut raw = records(&outcome);
    raw.sort();
    assert_eq!(
        raw,
        vec![
            ("log.txt".to_owned(), "2:error: disk".to_owned()),
            ("log.txt".to_owned(), "4:errors: 2".to_owned())
        ]
    );
    assert_eq!(outcome.counters.get("matched-lines"), Some(&2));

    let bad = run(
        &grep,
        Call::map(b"x".to_vec()).with_params(r#"{"patern":"x"}"#),
    )
    .await;
    assert!(
        matches!(&bad.result, Err(ExecError::Guest(m)) if m.contains("unknown field `patern`")),
        "{:?}",
        bad.result
    );
}

#[tokio::test]
async fn csv2json_turns_rows_into_json_lines() {
    let csv = load(guests::CSV2JSON);
    let outcome = run(
        &csv,
        Call::preprocess(b"name,age\nada,36\n\"lin, k\",7\n".to_vec()),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(bytes(&outcome)),
        "{\"name\":\"ada\",\"age\":\"36\"}\n{\"name\":\"lin, k\",\"age\":\"7\"}\n"
    );
}

#[tokio::test]
async fn a_missing_export_is_named() {
    let noop = load(guests::NOOP);
    let outcome = run(&noop, Call::map(Vec::new())).await;
    assert!(
        matches!(&outcome.result, Err(ExecError::MissingExport { kind: "map", export }) if export.contains("mapper")),
        "{:?}",
        outcome.result
    );
}

#[tokio::test]
async fn infinite_loop_times_out_at_its_limit() {
    let guest = load(guests::HOSTILE_LOOP);
    let timeout = Duration::from_millis(300);
    // Stopped at all (no wall-clock bound on how soon: two busy cores
    // make any such bound flaky), classified, and not before its limit.
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            &guest,
            Call::task(Vec::new()).with_limits(Limits {
                timeout,
                ..limits()
            }),
        ),
    )
    .await
    .expect("the loop was stopped");
    assert_eq!(outcome.result, Err(ExecError::Timeout(timeout)));
    assert!(
        outcome.elapsed >= timeout,
        "stopped after {:?}",
        outcome.elapsed
    );
    still_works().await;
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    let guest = load(guests::HOSTILE_LOOP);
    let outcome = run(
        &guest,
        Call::task(Vec::new()).with_limits(Limits {
            fuel: Some(5_000_000),
            ..limits()
        }),
    )
    .await;
    assert_eq!(outcome.result, Err(ExecError::OutOfFuel(5_000_000)));
    assert_eq!(outcome.fuel_used, Some(5_000_000));

    // A metered call of a well-behaved guest reports what it used.
    let noop = load(guests::NOOP);
    let metered = run(
        &noop,
        Call::task(b"x".to_vec()).with_limits(Limits {
            fuel: Some(50_000_000),
            ..limits()
        }),
    )
    .await;
    assert_eq!(bytes(&metered), b"x");
    assert!(metered.fuel_used.is_some_and(|f| f > 0 && f < 50_000_000));
    still_works().await;
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let guest = load(guests::HOSTILE_MEMBOMB);
    let limit = 32 << 20;
    let outcome = run(
        &guest,
        Call::task(Vec::new()).with_limits(Limits {
            memory_bytes: limit,
            ..limits()
        }),
    )
    .await;
    assert_eq!(outcome.result, Err(ExecError::MemoryLimit { limit }));
    still_works().await;
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_stack() {
    let guest = load(guests::HOSTILE_RECURSION);
    let outcome = run(&guest, Call::task(Vec::new()).with_limits(limits())).await;
    assert_eq!(
        outcome.result,
        Err(ExecError::Trap(TrapKind::StackOverflow))
    );
    still_works().await;
}

#[tokio::test]
async fn huge_output_hits_the_output_limit() {
    let guest = load(guests::HOSTILE_HUGE_OUTPUT);
    let limit = 1 << 20;
    let outcome = run(
        &guest,
        Call::map(Vec::new()).with_limits(Limits {
            output_bytes: limit,
            ..limits()
        }),
    )
    .await;
    assert_eq!(outcome.result, Err(ExecError::OutputTooLarge { limit }));
    still_works().await;
}

#[tokio::test]
async fn task_output_past_the_limit_is_refused() {
    let noop = load(guests::NOOP);
    let outcome = run(
        &noop,
        Call::task(vec![7; 4096]).with_limits(Limits {
            output_bytes: 1024,
            ..limits()
        }),
    )
    .await;
    assert_eq!(
        outcome.result,
        Err(ExecError::OutputTooLarge { limit: 1024 })
    );
}

#[tokio::test]
async fn a_panic_reaches_the_user_with_message_and_location() {
    let guest = load(guests::HOSTILE_PANIC);
    let outcome = run(&guest, Call::task(b"abc".to_vec())).await;
    match &outcome.result {
        Err(ExecError::Panic { message, location }) => {
            assert_eq!(message, "the input has only 3 bytes");
            assert!(location.contains("src/lib.rs:"), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let shown = outcome.result.unwrap_err().to_string();
    assert!(shown.starts_with("guest panicked at "), "{shown}");
    assert!(String::from_utf8_lossy(&outcome.log).contains("the input has only 3 bytes"));
    still_works().await;
}

#[tokio::test]
async fn the_host_file_system_is_out_of_reach() {
    let guest = load(guests::HOSTILE_FS_ESCAPE);
    let outcome = run(&guest, Call::task(Vec::new())).await;
    assert!(
        matches!(&outcome.result, Err(ExecError::Guest(m)) if m.starts_with("cannot read /etc/passwd")),
        "{:?}",
        outcome.result
    );

    // A granted directory is visible, read-only, where the grant says.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("passwd"), b"granted-file\n").expect("write");
    let grants = Grants {
        dirs: vec![DirGrant {
            host: dir.path().to_owned(),
            guest: "/etc".into(),
            writable: false,
        }],
        ..Grants::default()
    };
    let granted = run(&guest, Call::task(Vec::new()).with_grants(grants)).await;
    assert_eq!(bytes(&granted), b"granted-file\n");
}

#[tokio::test]
async fn the_network_is_out_of_reach_unless_granted() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let guest = load(guests::HOSTILE_NET_ESCAPE);

    let denied = run(&guest, Call::task(addr.clone().into_bytes())).await;
    assert!(
        matches!(&denied.result, Err(ExecError::Guest(m)) if m.starts_with("cannot connect")),
        "{:?}",
        denied.result
    );
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "nothing may have connected"
    );

    // Granted the internet: loopback is not part of it.
    let internet = Grants {
        network: true,
        hosts: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ..Grants::default()
    };
    let refused = run(
        &guest,
        Call::task(addr.clone().into_bytes()).with_grants(internet),
    )
    .await;
    assert!(
        matches!(&refused.result, Err(ExecError::Guest(m)) if m.starts_with("cannot connect")),
        "{:?}",
        refused.result
    );
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "nothing may have connected"
    );

    // Granted the network and this address: it connects.
    let grants = Grants {
        network: true,
        hosts: vec![addr.parse().unwrap()],
        ..Grants::default()
    };
    let allowed = run(&guest, Call::task(addr.into_bytes()).with_grants(grants)).await;
    assert_eq!(bytes(&allowed), b"connected");
    assert!(listener.accept().is_ok(), "the granted guest connected");
}

#[tokio::test]
async fn clocks_and_randomness_are_fixed_unless_granted() {
    let guest = load(guests::HOSTILE_NONDETERMINISM);
    let first = run(&guest, Call::task(Vec::new())).await;
    let second = run(&guest, Call::task(Vec::new())).await;
    assert_eq!(bytes(&first), bytes(&second));
    let text = String::from_utf8_lossy(bytes(&first)).into_owned();
    assert!(text.starts_with("wall=946684800000000000 "), "{text}");

    let mut seeded = Call::task(Vec::new());
    seeded.seed = 7;
    let other_seed = run(&guest, seeded).await;
    assert_ne!(
        bytes(&other_seed),
        bytes(&first),
        "the seed drives randomness"
    );

    let grants = Grants {
        clock: true,
        random: true,
        ..Grants::default()
    };
    let real_a = run(&guest, Call::task(Vec::new()).with_grants(grants.clone())).await;
    let real_b = run(&guest, Call::task(Vec::new()).with_grants(grants)).await;
    assert_ne!(bytes(&real_a), bytes(&real_b));
    assert!(!String::from_utf8_lossy(bytes(&real_a)).starts_with("wall=946684800"));
}

#[tokio::test]
async fn log_past_its_limit_is_cut_and_the_call_succeeds() {
    let guest = load(guests::HOSTILE_LOG_SPAM);
    let limit = 64 * 1024;
    let outcome = run(
        &guest,
        Call::task(Vec::new()).with_limits(Limits {
            log_bytes: limit,
            ..limits()
        }),
    )
    .await;
    assert_eq!(bytes(&outcome), b"done");
    assert!(outcome.log_truncated);
    assert!(
        outcome.log.len() < limit as usize + 100,
        "{}",
        outcome.log.len()
    );
    let log = String::from_utf8_lossy(&outcome.log);
    assert!(log.starts_with("[info] spam"), "{}", &log[..40]);
    assert!(log.contains("0 spam"), "stdout lands in the same log");
    assert!(log.ends_with(&format!("[sandmill] log truncated at {limit} bytes\n")));
}

#[tokio::test]
async fn bad_modules_are_refused_with_one_clear_line() {
    let garbage = SANDBOX.load(b"this is not wasm at all").unwrap_err();
    assert!(
        matches!(&garbage, ExecError::InvalidModule(m) if m.contains("not a WebAssembly file"))
    );

    let noop = std::fs::read(guests::NOOP).expect("noop");
    let truncated = SANDBOX.load(&noop[..noop.len() / 2]).unwrap_err();
    assert!(
        matches!(truncated, ExecError::InvalidModule(_)),
        "{truncated:?}"
    );
    assert!(!truncated.to_string().contains('\n'));

    // The smallest valid core module: header only.
    let core = SANDBOX.load(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(&core, ExecError::InvalidModule(m) if m.contains("core WebAssembly module")));

    let small = Sandbox::new(SandboxConfig {
        max_module_bytes: 1024,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    assert_eq!(
        small.load(&noop).unwrap_err(),
        ExecError::ModuleTooLarge {
            size: noop.len(),
            limit: 1024
        }
    );
    still_works().await;
}

#[tokio::test]
async fn a_module_is_compiled_once_per_cache_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SandboxConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    };
    let wasm = std::fs::read(guests::NOOP).expect("noop");

    let first = Sandbox::new(config.clone()).expect("sandbox");
    let module = first.load(&wasm).expect("load");
    first.load(&wasm).expect("load again");
    assert_eq!(
        first.cache_stats(),
        CacheStats {
            compiled: 1,
            from_disk: 0
        }
    );
    assert_eq!(module.hash().len(), 64);

    // Another process on the same machine: precompiled from disk.
    let second = Sandbox::new(config.clone()).expect("sandbox");
    let module = second.load(&wasm).expect("load");
    assert_eq!(
        second.cache_stats(),
        CacheStats {
            compiled: 0,
            from_disk: 1
        }
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        second.call(&module, Call::task(b"from disk".to_vec())),
    )
    .await
    .expect("in time");
    assert_eq!(bytes(&outcome), b"from disk");

    // One changed byte inside the artifact (machine code that would run as
    // it is): its tag no longer matches, so it is compiled again, never
    // loaded.
    let artifact = std::fs::read_dir(dir.path())
        .expect("read cache")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact");
    let mut changed = std::fs::read(&artifact).expect("artifact");
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    std::fs::write(&artifact, &changed).expect("change it");
    let checked = Sandbox::new(config.clone()).expect("sandbox");
    let module = checked.load(&wasm).expect("load");
    assert_eq!(
        checked.cache_stats(),
        CacheStats {
            compiled: 1,
            from_disk: 0
        }
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        checked.call(&module, Call::task(b"recompiled".to_vec())),
    )
    .await
    .expect("in time");
    assert_eq!(bytes(&outcome), b"recompiled");

    // Another module's artifact (valid, with its own tag) under this
    // module's name is not taken for it either.
    let panic_wasm = std::fs::read(guests::HOSTILE_PANIC).expect("panic guest");
    checked.load(&panic_wasm).expect("load the other");
    let other = std::fs::read_dir(dir.path())
        .expect("read cache")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "cwasm") && *path != artifact)
        .expect("the other artifact");
    std::fs::copy(&other, &artifact).expect("swap");
    let swapped = Sandbox::new(config.clone()).expect("sandbox");
    let module = swapped.load(&wasm).expect("load");
    assert_eq!(
        swapped.cache_stats(),
        CacheStats {
            compiled: 1,
            from_disk: 0
        }
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        swapped.call(&module, Call::task(b"its own code".to_vec())),
    )
    .await
    .expect("in time");
    assert_eq!(bytes(&outcome), b"its own code");

    // A damaged artifact is ignored and replaced, never fatal.
    for entry in std::fs::read_dir(dir.path()).expect("read cache") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(path, b"damaged").expect("damage");
        }
    }
    let third = Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    third.load(&wasm).expect("load despite damage");
    assert_eq!(
        third.cache_stats(),
        CacheStats {
            compiled: 1,
            from_disk: 0
        }
    );
}

#[test]
fn modules_kept_in_memory_stay_within_their_budget() {
    let noop = std::fs::read(guests::NOOP).expect("noop");
    let panic = std::fs::read(guests::HOSTILE_PANIC).expect("panic guest");
    // Room for the larger one only: loading the other drops the older.
    let sandbox = Sandbox::new(SandboxConfig {
        max_kept_module_bytes: noop.len().max(panic.len()),
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    sandbox.load(&noop).expect("load");
    sandbox.load(&noop).expect("kept");
    assert_eq!(
        (sandbox.kept_modules(), sandbox.cache_stats().compiled),
        (1, 1)
    );
    sandbox.load(&panic).expect("load the other");
    assert_eq!(sandbox.kept_modules(), 1, "the budget holds one");
    // The dropped one is loaded (here: compiled) again when needed.
    sandbox.load(&noop).expect("load again");
    assert_eq!(
        (sandbox.kept_modules(), sandbox.cache_stats().compiled),
        (1, 3)
    );

    // With room for both, both stay.
    let roomy = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    roomy.load(&noop).expect("load");
    roomy.load(&panic).expect("load");
    roomy.load(&noop).expect("kept");
    assert_eq!((roomy.kept_modules(), roomy.cache_stats().compiled), (2, 2));
}
