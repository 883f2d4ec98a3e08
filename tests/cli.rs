//! The `sandmill` commands a user lives in: `run` (embedded, throw-away)
//! and the client commands against a real `sandmill dev`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn sandmill(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandmill"));
    cmd.env("XDG_STATE_HOME", state)
        .env_remove("SANDMILL_SERVER");
    cmd
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The example job files name guests by path; make sure they are built.
fn guests_built() {
    assert!(Path::new(sandmill_test_artifacts::WORDCOUNT).exists());
}

#[test]
fn run_prints_the_same_word_count_as_exec() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let ran = ok(&sandmill(state.path())
        .arg("run")
        .arg(examples().join("wordcount.toml"))
        .output()
        .unwrap());
    let exec = ok(&sandmill(state.path())
        .args([
            "exec",
            sandmill_test_artifacts::WORDCOUNT,
            "--kind",
            "map",
            "--input",
        ])
        .arg(examples().join("alice.txt"))
        .output()
        .unwrap());
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
    ok(&sandmill(state.path())
        .arg("run")
        .arg(examples().join("wordcount.toml"))
        .arg("--input")
        .arg(inputs.path())
        .arg("--output")
        .arg(out.path())
        .output()
        .unwrap());
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
    let failed = sandmill(state.path())
        .arg("run")
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("failed[guest-panic]"), "{stderr}");

    let typo = state.path().join("typo.toml");
    std::fs::write(
        &typo,
        "name = \"x\"\n[task]\nmodule = \"m.wasm\"\nkind = \"task\"\ninptu = \"x\"\n",
    )
    .unwrap();
    let refused = sandmill(state.path())
        .arg("run")
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("inptu"));
}

#[test]
fn client_commands_against_a_dev_server() {
    guests_built();
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut dev = support::dev_command(data.path(), port)
        .env("XDG_STATE_HOME", state.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "dev did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = |args: &[&str]| -> Output {
        sandmill(state.path())
            .args(["--server", &server])
            .args(args)
            .output()
            .unwrap()
    };

    let wordcount = examples().join("wordcount.toml");
    let id = ok(&sandmill(state.path())
        .args(["--server", &server, "submit"])
        .arg(&wordcount)
        .arg("--wait")
        .output()
        .unwrap());
    let id = id.trim().to_owned();
    let status = ok(&client(&["status", "LAST"]));
    assert!(
        status.contains("succeeded") && status.contains("1 succeeded"),
        "{status}"
    );
    assert_eq!(ok(&client(&["status", &id])), status);
    let waited = client(&["wait", "LAST"]);
    ok(&waited);
    assert!(ok(&client(&["jobs"])).contains("wordcount"));
    let out = tempfile::tempdir().unwrap();
    ok(&client(&[
        "fetch",
        "LAST",
        "-o",
        out.path().to_str().unwrap(),
    ]));
    assert!(
        std::fs::read_to_string(out.path().join("part-00000"))
            .unwrap()
            .contains("Alice 6\n")
    );
    let logs = ok(&client(&["logs", "1"]));
    assert!(logs.starts_with("== attempt 0 on embedded/"), "{logs}");
    let cancel = client(&["cancel", "LAST"]);
    assert_eq!(cancel.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("[conflict]"));
    let missing = client(&["status", "424242"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("[not_found]"));

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
    let failed = sandmill(state.path())
        .args(["--server", &server, "submit"])
        .arg(&sweep)
        .arg("--wait")
        .output()
        .unwrap();
    assert_eq!(
        failed.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    dev.kill().unwrap();
    dev.wait().unwrap();
}
