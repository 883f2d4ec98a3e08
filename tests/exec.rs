//! `sandmill exec` end to end: the real binary, real guests.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::LazyLock;

use proptest::prelude::*;
use sandmill_test_artifacts as guests;

/// One compiled-module cache for the whole test binary, so each guest is
/// compiled once, as on a user's machine.
static CACHE: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("tempdir"));

fn sandmill() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandmill"));
    cmd.env("SANDMILL_CACHE_DIR", CACHE.path());
    cmd
}

/// Runs `sandmill exec MODULE ARGS...` with `stdin` as input; bounded by
/// the call's own timeout (30 s unless the args set one).
fn exec(module: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = sandmill();
    cmd.arg("exec").arg(module).args(args);
    if !args.contains(&"--timeout") {
        cmd.args(["--timeout", "30s"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sandmill");
    let mut input = child.stdin.take().expect("stdin");
    // A guest may stop reading before the end; that is not our failure.
    let _ = input.write_all(stdin);
    drop(input);
    // Bounded: the call's own timeout plus time to start and print.
    let limit = std::time::Duration::from_secs(120);
    let (done, finished) = std::sync::mpsc::channel();
    let id = child.id();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
        }
    });
    let output = child.wait_with_output().expect("sandmill finished");
    let _ = done.send(());
    let _ = watchdog.join();
    output
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The word count rule, natively: maximal runs of alphabetic chars, invalid
/// UTF-8 separating words; printed as sorted `word count` lines.
fn native_wordcount(text: &[u8]) -> String {
    let mut counts = BTreeMap::<&str, u64>::new();
    for chunk in text.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                *counts.entry(word).or_default() += 1;
            }
        }
    }
    counts.iter().map(|(w, n)| format!("{w} {n}\n")).collect()
}

fn wordcount(text: &[u8]) -> String {
    let output = exec(guests::WORDCOUNT, &["--kind", "map"], text);
    assert!(output.status.success(), "{}", stderr_of(&output));
    String::from_utf8(output.stdout).expect("words are valid UTF-8")
}

#[test]
fn wordcount_counts_non_ascii_letters_and_splits_on_invalid_utf8() {
    let text = b"Stra\xc3\x9fe stra\xc3\x9fe \xce\xa9mega \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e, na\xffive caf\xc3\xa9 caf\xc3\xa9 42 x\xe2\x82y \xc3";
    let got = wordcount(text);
    assert_eq!(got, native_wordcount(text));
    assert_eq!(
        got,
        "Straße 1\ncafé 2\nive 1\nna 1\nstraße 1\nx 1\ny 1\nΩmega 1\n日本語 1\n"
    );
}

#[test]
fn map_then_reduce_through_a_pipe_equals_the_combined_map() {
    let text = "one two two three three three".as_bytes();
    let raw = exec(guests::WORDCOUNT, &["--kind", "map", "--no-combine"], text);
    assert!(raw.status.success(), "{}", stderr_of(&raw));
    // One record per distinct word: the map sums inside the guest.
    assert_eq!(
        String::from_utf8_lossy(&raw.stdout),
        "one 1\nthree 3\ntwo 2\n"
    );
    let reduced = exec(guests::WORDCOUNT, &["--kind", "reduce"], &raw.stdout);
    assert!(reduced.status.success(), "{}", stderr_of(&reduced));
    assert_eq!(
        String::from_utf8_lossy(&reduced.stdout),
        native_wordcount(text)
    );
}

/// Text from letters of several scripts, digits, punctuation, white space
/// and bytes that are not UTF-8.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        "[a-zA-Z]{1,8}".prop_map(String::into_bytes),
        "[àéîõüßçÆØÅ]{1,4}".prop_map(String::into_bytes),
        "[αβγΩжЖ日本語]{1,3}".prop_map(String::into_bytes),
        "[0-9 .,;!\n\t-]{1,3}".prop_map(String::into_bytes),
        prop::collection::vec(0x80u8..=0xff, 1..3),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn wordcount_through_exec_equals_the_native_rule(text in text()) {
        prop_assert_eq!(wordcount(&text), native_wordcount(&text));
    }
}

fn assert_one_line_failure(output: &Output, reason: &str, contains: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(output));
    let stderr = stderr_of(output);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("error[{reason}]: ")), "{stderr}");
    assert!(last.contains(contains), "{stderr}");
}

#[test]
fn bad_modules_give_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"#!/bin/sh\necho not wasm\n").expect("write");
    let noop = std::fs::read(guests::NOOP).expect("noop");
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &noop[..noop.len() / 3]).expect("write");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");

    for (path, contains) in [
        (&garbage, "not a WebAssembly file"),
        (&truncated, "invalid module"),
        (&core, "core WebAssembly module, not a component"),
    ] {
        let output = exec(path.to_str().expect("utf-8 path"), &["--kind", "task"], b"");
        assert_one_line_failure(&output, "module-invalid", contains);
        assert_eq!(
            stderr_of(&output).lines().count(),
            1,
            "{}",
            stderr_of(&output)
        );
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn hostile_guests_fail_classified_through_exec() {
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            guests::HOSTILE_LOOP,
            &["--kind", "task", "--timeout", "300ms"],
            "timeout",
            "300ms",
        ),
        (
            guests::HOSTILE_LOOP,
            &["--kind", "task", "--fuel", "1000000"],
            "out-of-fuel",
            "1000000",
        ),
        (
            guests::HOSTILE_MEMBOMB,
            &["--kind", "task", "--memory", "32MiB"],
            "out-of-memory",
            "33554432",
        ),
        (
            guests::HOSTILE_RECURSION,
            &["--kind", "task"],
            "trap",
            "stack overflow",
        ),
        (
            guests::HOSTILE_HUGE_OUTPUT,
            &["--kind", "map", "--output-limit", "1MiB"],
            "output-too-large",
            "1048576",
        ),
        (
            // Empty records: each counts its overhead toward the limit.
            guests::HOSTILE_HUGE_OUTPUT,
            &[
                "--kind",
                "map",
                "--output-limit",
                "1MiB",
                "--params",
                r#""empty""#,
            ],
            "output-too-large",
            "1048576",
        ),
        (
            guests::HOSTILE_PANIC,
            &["--kind", "task"],
            "guest-panic",
            "src/lib.rs",
        ),
        (
            guests::HOSTILE_FS_ESCAPE,
            &["--kind", "task"],
            "guest-error",
            "/etc/passwd",
        ),
        (
            guests::NOOP,
            &["--kind", "reduce"],
            "module-invalid",
            "reduce",
        ),
    ];
    for (module, args, reason, contains) in cases {
        let output = exec(module, args, b"");
        assert_one_line_failure(&output, reason, contains);
    }
}

#[test]
fn the_clock_is_fixed_unless_granted() {
    let fixed = exec(guests::HOSTILE_NONDETERMINISM, &["--kind", "task"], b"");
    assert!(fixed.status.success(), "{}", stderr_of(&fixed));
    let again = exec(guests::HOSTILE_NONDETERMINISM, &["--kind", "task"], b"");
    assert_eq!(fixed.stdout, again.stdout);
    let granted = exec(
        guests::HOSTILE_NONDETERMINISM,
        &["--kind", "task", "--allow", "clock,random"],
        b"",
    );
    assert!(granted.status.success(), "{}", stderr_of(&granted));
    assert_ne!(fixed.stdout, granted.stdout);
}

#[test]
fn params_reach_the_guest_and_bad_params_are_refused() {
    let output = exec(
        guests::GREP,
        &[
            "--kind",
            "map",
            "--params",
            r#"{"pattern":"b+"}"#,
            "--input-name",
            "f",
        ],
        b"abc\nxyz\nbb\n",
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "f 1:abc\nf 3:bb\n");

    let bad = exec(
        guests::GREP,
        &["--kind", "map", "--params", "{not json"],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr_of(&bad).contains("--params is not valid JSON"),
        "{}",
        stderr_of(&bad)
    );
}

#[test]
fn preprocess_and_task_print_their_bytes() {
    let output = exec(guests::CSV2JSON, &["--kind", "preprocess"], b"a,b\n1,2\n");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(output.stdout, b"{\"a\":\"1\",\"b\":\"2\"}\n");

    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), b"from a file").expect("write");
    let output = exec(
        guests::NOOP,
        &[
            "--kind",
            "task",
            "--input",
            file.path().to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_eq!(output.stdout, b"from a file");
    assert!(Path::new(guests::NOOP).exists());
}

/// A loopback listener that takes one connection and returns its first
/// line.
fn one_connection() -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = std::thread::spawn(move || {
        use std::io::BufRead;
        listener.set_nonblocking(false).expect("blocking listener");
        let (stream, _) = listener.accept().expect("a connection");
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .expect("a line");
        line
    });
    (addr, accepted)
}

#[test]
fn a_guest_granted_the_network_connects_to_a_loopback_listener() {
    let (addr, accepted) = one_connection();
    let output = exec(
        guests::HOSTILE_NET_ESCAPE,
        &["--kind", "task", "--allow", "network"],
        addr.as_bytes(),
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(output.stdout, b"connected");
    assert_eq!(accepted.join().expect("listener"), "escaped\n");
    // And without the grant it cannot.
    let (addr, _unused) = one_connection();
    let denied = exec(
        guests::HOSTILE_NET_ESCAPE,
        &["--kind", "task"],
        addr.as_bytes(),
    );
    assert_one_line_failure(&denied, "guest-error", "cannot connect");
}

/// Runs `sandmill exec` in a shell pipeline into `head -c 400`; returns
/// sandmill's exit status and what its stderr (when not in the pipe) said.
fn into_head(module: &str, args: &str, both: bool) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr");
    let redirect = if both {
        "2>&1".to_owned()
    } else {
        format!("2>{}", err.display())
    };
    let script = format!(
        "\"$0\" exec \"$1\" {args} </dev/null {redirect} | head -c 400 >/dev/null; echo \"${{PIPESTATUS[0]}}\""
    );
    let output = Command::new("bash")
        .args(["-c", &script, env!("CARGO_BIN_EXE_sandmill"), module])
        .env("SANDMILL_CACHE_DIR", CACHE.path())
        .output()
        .expect("bash");
    let status = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (status, std::fs::read_to_string(err).unwrap_or_default())
}

#[test]
fn a_closed_pipe_ends_exec_quietly() {
    // A guest that logs a megabyte, stdout and stderr both into `head`.
    let (status, _) = into_head(guests::HOSTILE_LOG_SPAM, "--kind task", true);
    assert_eq!(status, "0", "exit status with stderr closed");
    // A task with a large output into `head`, stderr kept: nothing about a
    // panic or a broken pipe.
    let big = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(big.path(), vec![b'x'; 4 << 20]).expect("write");
    let args = format!("--kind task --input {}", big.path().display());
    let (status, stderr) = into_head(guests::NOOP, &args, false);
    assert_eq!(status, "0", "exit status with stdout closed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("broken pipe"), "{stderr}");
}

/// The disk cache of compiled modules keeps to `--max-cache`: past it the
/// least recently used go (and are compiled again when next needed).
#[test]
fn the_compiled_module_cache_keeps_to_its_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap().to_owned();
    let artifacts = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        names.sort();
        names
    };
    let hash_of = |module: &str| sandmill_runtime::blob::hash(&std::fs::read(module).unwrap());
    for module in [guests::NOOP, guests::GREP] {
        exec(module, &["--kind", "task", "--cache-dir", &cache], b"x");
    }
    let both = artifacts();
    assert!(
        [guests::NOOP, guests::GREP]
            .iter()
            .all(|m| both.iter().any(|a| a.starts_with(&hash_of(m)))),
        "{both:?}"
    );
    // A limit of one byte keeps only what was just compiled.
    let out = exec(
        guests::NORMALIZE,
        &[
            "--kind",
            "preprocess",
            "--cache-dir",
            &cache,
            "--max-cache",
            "1B",
        ],
        b"x",
    );
    let left = artifacts();
    let normalize = hash_of(guests::NORMALIZE);
    assert!(
        !left.is_empty() && left.iter().all(|a| a.starts_with(&normalize)),
        "{left:?} {}",
        stderr_of(&out)
    );
}
