//! The `sandmill` commands a user lives in: `run` (embedded, throw-away)
//! and the client commands against a real `sandmill dev`. Every process is
//! bounded in time and killed when a test fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{ok, sandmill};

/// A command that ends on its own; killed (and the test failed) past this.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `sandmill ARGS` to its end, bounded.
fn run(state: &Path, args: &[&str]) -> Output {
    support::output_within(sandmill(state).args(args), LIMIT)
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The example job files name guests by path; make sure they are built.
fn guests_built() {
    assert!(Path::new(sandmill_test_artifacts::WORDCOUNT).exists());
}

#[test]
fn run_prints_the_same_word_count_as_exec() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let wordcount = examples().join("wordcount.toml");
    let ran = ok(&run(state.path(), &["run", path(&wordcount)]));
    let alice = examples().join("alice.txt");
    let exec = ok(&run(
        state.path(),
        &[
            "exec",
            sandmill_test_artifacts::WORDCOUNT,
            "--kind",
            "map",
            "--input",
            path(&alice),
        ],
    ));
    assert_eq!(ran, exec);
    assert!(ran.contains("Alice 6\n"));
}

#[test]
fn run_over_a_folder_writes_a_part_per_input_and_a_failed_job_exits_2() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("a.txt"), "one fish two fish").unwrap();
    std::fs::write(inputs.path().join("b.txt"), "red fish").unwrap();
    let out = tempfile::tempdir().unwrap();
    let wordcount = examples().join("wordcount.toml");
    ok(&run(
        state.path(),
        &[
            "run",
            path(&wordcount),
            "--input",
            path(inputs.path()),
            "--output",
            path(out.path()),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(out.path().join("part-00000")).unwrap(),
        "fish 2\none 1\ntwo 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("part-00001")).unwrap(),
        "fish 1\nred 1\n"
    );

    let job = state.path().join("panic.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"boom\"\n[task]\nmodule = \"{}\"\n",
            sandmill_test_artifacts::HOSTILE_PANIC
        ),
    )
    .unwrap();
    let failed = run(state.path(), &["run", path(&job)]);
    assert_eq!(failed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("failed[guest-panic]"), "{stderr}");
}

#[test]
fn job_file_errors_name_the_key_and_the_line() {
    let state = tempfile::tempdir().unwrap();
    for (text, said) in [
        (
            "name = \"x\"\n[task]\nmodule = \"m.wasm\"\nkind = \"task\"\ninptu = \"x\"\n",
            "task.inptu, line 5: unknown field `inptu`",
        ),
        (
            "name = \"x\"\n\n[sweep]\nmodule = \"m.wasm\"\ncount = \"ten\"\n",
            "sweep.count, line 5: expected an integer, found a string (\"ten\")",
        ),
        (
            "name = \"x\"\npriority = 12\n[task]\nmodule = \"m.wasm\"\n",
            "priority",
        ),
    ] {
        let job = state.path().join("job.toml");
        std::fs::write(&job, text).unwrap();
        let refused = run(state.path(), &["run", path(&job)]);
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }
}

/// A job file running the network guest against `addr`, granted the
/// network.
fn network_job(dir: &Path, addr: &str) -> std::path::PathBuf {
    let input = dir.join("addr.txt");
    std::fs::write(&input, addr).unwrap();
    let job = dir.join("net.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"net\"\n[task]\nmodule = \"{}\"\ninput = \"{}\"\n[grants]\nallow = [\"network\"]\n",
            sandmill_test_artifacts::HOSTILE_NET_ESCAPE,
            input.display()
        ),
    )
    .unwrap();
    job
}

#[test]
fn a_guest_granted_the_network_connects_under_sandmill_run() {
    let state = tempfile::tempdir().unwrap();
    let (addr, accepted) = support::one_connection();
    let job = network_job(state.path(), &addr);
    let out = ok(&run(state.path(), &["run", path(&job)]));
    assert_eq!(out, "connected");
    assert_eq!(accepted.join().unwrap(), "escaped\n");
}

#[test]
fn client_commands_against_a_dev_server() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let _dev = support::Killed::spawn(
        support::dev_command(data.path(), port)
            .args(["--allow-network", "127.0.0.1"])
            .env("XDG_STATE_HOME", state.path()),
    );
    support::wait_port(port, Duration::from_secs(60));
    let client = |args: &[&str]| -> Output {
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        run(state.path(), &all)
    };

    let wordcount = examples().join("wordcount.toml");
    let id = ok(&client(&["submit", path(&wordcount), "--wait"]));
    let id = id.trim().to_owned();
    let status = ok(&client(&["status", "LAST"]));
    assert!(
        status.contains("succeeded") && status.contains("1 succeeded"),
        "{status}"
    );
    assert_eq!(ok(&client(&["status", &id])), status);
    ok(&client(&["wait", "LAST"]));
    assert!(ok(&client(&["jobs"])).contains("wordcount"));
    assert!(ok(&client(&["jobs", "--status", "succeeded"])).contains("wordcount"));
    let out = tempfile::tempdir().unwrap();
    ok(&client(&["fetch", "LAST", "-o", path(out.path())]));
    assert!(
        std::fs::read_to_string(out.path().join("part-00000"))
            .unwrap()
            .contains("Alice 6\n")
    );
    // Beside the parts, what each is: part, task id, seq, params.
    let index = std::fs::read_to_string(out.path().join("index.csv")).unwrap();
    let mut lines = index.lines();
    assert_eq!(lines.next(), Some("part,task_id,seq,params"), "{index}");
    assert!(
        lines.next().unwrap().starts_with("part-00000,1,0,"),
        "{index}"
    );
    let logs = ok(&client(&["logs", "1"]));
    assert!(logs.starts_with("== attempt 0 on embedded/"), "{logs}");
    let cancel = client(&["cancel", "LAST"]);
    assert_eq!(cancel.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("[conflict]"));
    let missing = client(&["status", "424242"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("[not_found]"));
    let workers = ok(&client(&["workers"]));
    assert!(
        workers
            .lines()
            .any(|l| l.starts_with("embedded ") && l.contains("live")),
        "{workers}"
    );

    // A guest granted the network connects from the dev server's workers.
    let (addr, accepted) = support::one_connection();
    let job = network_job(state.path(), &addr);
    ok(&client(&["submit", path(&job), "--wait"]));
    assert_eq!(accepted.join().unwrap(), "escaped\n");

    // A job that fails: wait exits 2.
    let sweep = state.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        format!(
            "name = \"loops\"\n[sweep]\nmodule = \"{}\"\ncount = 2\n[limits]\ntimeout = \"200ms\"\n",
            sandmill_test_artifacts::HOSTILE_LOOP
        ),
    )
    .unwrap();
    let failed = client(&["submit", path(&sweep), "--wait"]);
    assert_eq!(
        failed.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    // An ended job is deleted; then it is not found.
    ok(&client(&["delete", "LAST"]));
    let gone = client(&["status", "LAST"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("[not_found]"));
}

/// `sandmill new` writes crates that build for `wasm32-wasip2` and run
/// under `sandmill exec` as they are; a bad name or a folder in use is
/// refused, writing nothing.
#[test]
fn new_crates_build_and_run_as_they_are() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Built where later runs find the dependencies built, and against the
    // guests' lock file, so nothing is fetched.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandmill-new");
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-examples/Cargo.lock");
    let input = dir.path().join("input.txt");
    std::fs::write(&input, b"to be or not to be  \r\nna\xc3\xafve\xff").unwrap();
    let input = input.to_str().unwrap();
    for (kind, crate_name) in [
        ("mapreduce", "hello-mr"),
        ("task", "hello-task"),
        ("preprocess", "hello-pre"),
    ] {
        let home = dir.path().join(crate_name);
        let said = ok(&run(
            state.path(),
            &[
                "new",
                crate_name,
                "--kind",
                kind,
                "--dir",
                home.to_str().unwrap(),
            ],
        ));
        assert!(
            said.contains("cargo build --release --target wasm32-wasip2"),
            "{said}"
        );
        std::fs::copy(&lock, home.join("Cargo.lock")).unwrap();
        let built = support::output_within(
            Command::new(env!("CARGO"))
                .current_dir(&home)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--offline",
                ])
                .env("CARGO_TARGET_DIR", &target),
            Duration::from_secs(600),
        );
        assert!(
            built.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", crate_name.replace('-', "_")));
        let wasm = wasm.to_str().unwrap();
        match kind {
            "mapreduce" => {
                let mapped = ok(&run(
                    state.path(),
                    &["exec", wasm, "--kind", "map", "--input", input],
                ));
                assert_eq!(
                    mapped.lines().filter(|l| *l == "be 2").count(),
                    1,
                    "{mapped}"
                );
                let pairs = dir.path().join("pairs.txt");
                std::fs::write(&pairs, &mapped).unwrap();
                let reduced = ok(&run(
                    state.path(),
                    &[
                        "exec",
                        wasm,
                        "--kind",
                        "reduce",
                        "--input",
                        pairs.to_str().unwrap(),
                    ],
                ));
                assert!(reduced.lines().any(|l| l == "be 2"), "{reduced}");
                assert!(reduced.lines().any(|l| l == "naïve 1"), "{reduced}");
            }
            "task" => {
                let out = ok(&run(
                    state.path(),
                    &["exec", wasm, "--kind", "task", "--input", input],
                ));
                assert!(out.starts_with("1: to be"), "{out}");
                assert!(out.contains("\n2: na"), "{out}");
            }
            _ => {
                let out = run(
                    state.path(),
                    &["exec", wasm, "--kind", "preprocess", "--input", input],
                );
                ok(&out);
                assert_eq!(out.stdout, b"to be or not to be\nna\xc3\xafve\xff\n");
            }
        }
    }
    // Refused, and nothing written: a folder in use, a bad name.
    let used = dir.path().join("hello-mr");
    let before = std::fs::read(used.join("src/lib.rs")).unwrap();
    let refused = run(
        state.path(),
        &["new", "hello-mr", "--dir", used.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(used.join("src/lib.rs")).unwrap(), before);
    let bad = dir.path().join("bad");
    let refused = run(
        state.path(),
        &["new", "9 lives", "--dir", bad.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a crate name"));
    assert!(!bad.exists());
}

/// The SDK crates package on their own (the contract ships inside the
/// macros crate, not through a path outside it).
#[test]
fn the_sdk_crates_package() {
    let target = tempfile::tempdir().unwrap();
    let packaged = support::output_within(
        Command::new(env!("CARGO"))
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args([
                "package",
                "--no-verify",
                "--allow-dirty",
                "--offline",
                "-p",
                "sandmill-sdk-macros",
                "-p",
                "sandmill-sdk",
                "--target-dir",
            ])
            .arg(target.path()),
        Duration::from_secs(300),
    );
    let said = String::from_utf8_lossy(&packaged.stderr);
    assert!(packaged.status.success(), "{said}");
    // The macros crate carries the WIT it expands.
    let listed = support::output_within(
        Command::new(env!("CARGO"))
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args([
                "package",
                "--list",
                "--allow-dirty",
                "--offline",
                "-p",
                "sandmill-sdk-macros",
            ]),
        Duration::from_secs(300),
    );
    let files = String::from_utf8_lossy(&listed.stdout);
    assert!(files.lines().any(|f| f == "wit/sandmill.wit"), "{files}");
}

/// The test certificates: a CA and a `localhost`/127.0.0.1 certificate it
/// signed (valid to 2126; see tests/tls/README.md).
fn tls(name: &str) -> String {
    format!("{}/../tests/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn https_serves_the_api_and_the_cli_trusts_it_through_ca_cert() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let dev = support::dev(&[
        "--tls-cert",
        &tls("localhost.pem"),
        "--tls-key",
        &tls("localhost.key"),
    ]);
    let https = format!("https://localhost:{}", dev.port);
    let ca = tls("ca.pem");
    let client = |args: &[&str]| -> Output {
        let mut all = vec!["--server", https.as_str(), "--ca-cert", ca.as_str()];
        all.extend_from_slice(args);
        run(state.path(), &all)
    };

    // The CLI submits, waits and reads back over HTTPS.
    let wordcount = examples().join("wordcount.toml");
    let id = ok(&client(&["submit", path(&wordcount), "--wait"]));
    assert!(ok(&client(&["status", id.trim()])).contains("1 succeeded"));
    assert!(ok(&client(&["jobs"])).contains("wordcount"));

    // Without the CA the server is not trusted, and nothing is sent.
    let untrusted = run(state.path(), &["--server", &https, "jobs"]);
    assert_eq!(untrusted.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.contains("cannot reach a Sandmill server at https://localhost"),
        "{stderr}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = run(
        state.path(),
        &[
            "--server",
            &format!("http://127.0.0.1:{}", dev.port),
            "jobs",
        ],
    );
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    // A CA file that holds no certificate is refused before any request.
    let bad = run(
        state.path(),
        &[
            "--server",
            &https,
            "--ca-cert",
            &tls("localhost.key"),
            "jobs",
        ],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--ca-cert") && stderr.contains("no certificate"),
        "{stderr}"
    );

    // The certificate names 127.0.0.1 too.
    let by_ip = format!("https://127.0.0.1:{}", dev.port);
    ok(&run(
        state.path(),
        &["--server", &by_ip, "--ca-cert", &ca, "jobs"],
    ));

    // A server whose key cannot be read does not start, and says which file.
    let data = tempfile::tempdir().unwrap();
    let missing = support::output_within(
        support::dev_command(data.path(), support::free_port()).args([
            "--tls-cert",
            &tls("localhost.pem"),
            "--tls-key",
            "/nonexistent/key.pem",
        ]),
        Duration::from_secs(30),
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
    // The key of another certificate does not fit.
    let mismatched = support::output_within(
        support::dev_command(data.path(), support::free_port()).args([
            "--tls-cert",
            &tls("ca.pem"),
            "--tls-key",
            &tls("localhost.key"),
        ]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(
        !mismatched.status.success() && stderr.contains("does not fit"),
        "{stderr}"
    );
}

/// `--database` is taken on either side of `token`'s and `quota`'s
/// subcommands (the README writes it after them); without one, the
/// command says how to give it.
#[test]
fn operator_commands_take_the_database_before_or_after_their_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sandmill.db");
    let db = path(&db);
    let state = dir.path();
    let after = ok(&run(
        state,
        &[
            "token",
            "create",
            "--database",
            db,
            "--tenant",
            "ops",
            "--role",
            "admin",
        ],
    ));
    assert!(after.trim().starts_with("smt_"), "{after}");
    let before = ok(&run(
        state,
        &["token", "--database", db, "create", "--tenant", "ops"],
    ));
    assert!(before.trim().starts_with("smt_"), "{before}");
    let listed = ok(&run(state, &["token", "list", "--database", db]));
    assert_eq!(listed.matches("ops").count(), 2, "{listed}");
    ok(&run(
        state,
        &[
            "quota",
            "set",
            "--database",
            db,
            "--tenant",
            "ops",
            "--open-tasks",
            "5",
        ],
    ));
    let quotas = ok(&run(state, &["quota", "--database", db, "list"]));
    assert!(quotas.contains("ops"), "{quotas}");
    let missing = support::sandmill(state)
        .env_remove("SANDMILL_DATABASE")
        .args(["token", "list"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("--database"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
}

/// A client command with no server to talk to says how to start one or
/// point at one, in one line.
#[test]
fn a_client_with_no_server_says_how_to_start_or_find_one() {
    let state = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    let refused = run(state.path(), &["--server", &nowhere, "jobs"]);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    for hint in [
        nowhere.as_str(),
        "sandmill dev",
        "--server",
        "SANDMILL_SERVER",
    ] {
        assert!(said.contains(hint), "{hint}: {said}");
    }
}

/// A `count` sweep with `[sweep.params]` gives every task that table;
/// `status` shows the job's labels and parameters (on a dev whose workers
/// offer the labels).
#[test]
fn a_count_sweep_takes_constant_params_and_status_shows_them_with_labels() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let _dev = support::Killed::spawn(
        support::dev_command(data.path(), port).args(["--labels", "zone=eu"]),
    );
    support::wait_port(port, Duration::from_secs(60));
    let file = state.path().join("constant.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"constant\"\nlabels = {{ zone = \"eu\" }}\n[sweep]\nmodule = \"{}\"\ncount = 3\n[sweep.params]\nsize = 7\nmode = \"fast\"\n",
            sandmill_test_artifacts::NOOP
        ),
    )
    .unwrap();
    let client = |args: &[&str]| {
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        run(state.path(), &all)
    };
    let id = ok(&client(&["submit", path(&file), "--wait"]));
    let status = ok(&client(&["status", id.trim()]));
    assert!(status.contains("3 succeeded"), "{status}");
    assert!(status.contains("labels: zone=eu"), "{status}");
    assert!(
        status.contains(r#"params: {"mode":"fast","size":7}"#),
        "{status}"
    );
    // Each task got the table.
    let url = format!("{server}/v1/jobs/{}/tasks", id.trim());
    let tasks = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::get_json(
            &sandmill_server::tls::default_client(),
            &url,
        ));
    let items = tasks["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for task in items {
        assert_eq!(
            task["params"],
            serde_json::json!({"size": 7, "mode": "fast"}),
            "{task}"
        );
    }
}
