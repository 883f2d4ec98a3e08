//! `cargo bench -p sandmill-server --bench mapreduce`: the word count
//! map-reduce over a generated corpus of at least 1 GiB of text, next to a
//! single-threaded native Rust word count (std `HashMap`, the same word
//! rule) over the same files, measured in the same run.
//!
//! 1. Embedded: `sandmill run` of a `[mapreduce]` job (32 MiB splits, four
//!    reducers, two worker threads): MB/s from the command's start (the
//!    CLI cuts and uploads the splits) to its end (outputs written), and
//!    the process's peak RSS.
//! 2. Fleet: `sandmill serve` on Postgres, nats-server, two `sandmill
//!    worker` processes of one slot each; `sandmill submit --wait` of the
//!    same job: MB/s and the workers' peak RSS.
//!
//! The corpus is English-like text: words drawn from a Zipf distribution
//! over a vocabulary of the bundled corpus's words (English, German,
//! French) and 50,000 made-up ones (one in fifty with an accented letter),
//! in lines of about 80 bytes. It is kept in
//! `target/bench-corpus` between runs. `SANDMILL_MR_BYTES` sets its size
//! (default 1 GiB); under `cargo test` (no `--bench`) it runs on 16 MiB as
//! a smoke test. Name parts after `--` to run only those: `-- embedded`.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;

const FILES: usize = 16;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The same word rule as the word count guest.
fn words(input: &[u8], mut f: impl FnMut(&str)) {
    for chunk in input.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                f(word);
            }
        }
    }
}

fn vocabulary() -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus");
    for entry in std::fs::read_dir(corpus).unwrap() {
        let text = std::fs::read(entry.unwrap().path()).unwrap();
        words(&text, |w| {
            seen.insert(w.to_owned());
        });
    }
    // The common words first: the bundled texts' in order of length.
    let mut vocabulary: Vec<String> = seen.into_iter().collect();
    vocabulary.sort_by_key(|w| w.len());
    // Made-up words of ASCII letters, one in fifty with an accented one,
    // about as often as in English prose with names and loanwords.
    let mut rng = Rng(0x5eed);
    let accented: Vec<char> = "äöüéèàçñß".chars().collect();
    for _ in 0..50_000 {
        let len = 3 + (rng.next() % 9) as usize;
        let mut word: String = (0..len)
            .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
            .collect();
        if rng.next().is_multiple_of(50) {
            word.push(accented[(rng.next() % accented.len() as u64) as usize]);
        }
        vocabulary.push(word);
    }
    vocabulary
}

/// The corpus: `FILES` files of `bytes / FILES` each, made once.
fn corpus(bytes: u64) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-corpus")
        .join(format!("{bytes}-v2"));
    let files: Vec<PathBuf> = (0..FILES)
        .map(|i| dir.join(format!("part-{i:02}.txt")))
        .collect();
    let per_file = bytes / FILES as u64;
    if files
        .iter()
        .all(|f| std::fs::metadata(f).is_ok_and(|m| m.len() >= per_file))
    {
        return files;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let vocabulary = vocabulary();
    // Zipf with s = 1: the cumulative weights of 1/rank.
    let mut cumulative = Vec::with_capacity(vocabulary.len());
    let mut total = 0.0;
    for rank in 1..=vocabulary.len() {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut rng = Rng(42);
    for file in &files {
        let mut out = std::io::BufWriter::new(std::fs::File::create(file).unwrap());
        let mut written = 0u64;
        let mut line = String::new();
        while written < per_file {
            let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let rank = cumulative
                .partition_point(|c| *c < x)
                .min(vocabulary.len() - 1);
            line.push_str(&vocabulary[rank]);
            let punct = rng.next() % 16;
            line.push_str(match punct {
                0 => ", ",
                1 => ". ",
                _ => " ",
            });
            if line.len() >= 80 {
                line.push('\n');
                out.write_all(line.as_bytes()).unwrap();
                written += line.len() as u64;
                line.clear();
            }
        }
        out.flush().unwrap();
    }
    files
}

/// The native baseline: one thread, std `HashMap`, the same rule.
fn native(files: &[PathBuf]) -> (Duration, usize, u64) {
    let started = Instant::now();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for file in files {
        let text = std::fs::read(file).unwrap();
        words(&text, |w| {
            if let Some(n) = counts.get_mut(w) {
                *n += 1;
            } else {
                counts.insert(w.to_owned(), 1);
            }
        });
    }
    let total = counts.values().sum();
    (started.elapsed(), counts.len(), total)
}

/// Peak RSS (VmHWM) of a process, in MiB; 0 once it is gone.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Runs `child` to its end, sampling the peak RSS of it and `others`.
fn watch(mut child: Child, others: &[u32]) -> (std::process::ExitStatus, f64, f64) {
    let (mut own, mut theirs) = (0.0f64, 0.0f64);
    loop {
        own = own.max(peak_mib(child.id()));
        theirs = theirs.max(others.iter().map(|p| peak_mib(*p)).fold(0.0, f64::max));
        if let Some(status) = child.try_wait().unwrap() {
            return (status, own, theirs);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts of the job's outputs: distinct words and their sum.
fn read_outputs(dir: &Path) -> (usize, u64) {
    let mut distinct = 0;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The parts, not `fetch`'s index.csv beside them.
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            continue;
        }
        let text = std::fs::read(path).unwrap();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let (_, value) = sandmill_runtime::records::parse_line(line).unwrap();
            distinct += 1;
            total += std::str::from_utf8(&value).unwrap().parse::<u64>().unwrap();
        }
    }
    (distinct, total)
}

fn job_file(dir: &Path, corpus: &Path) -> PathBuf {
    let path = dir.join("wordcount.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"wordcount-bench\"\n[mapreduce]\nmodule = \"{}\"\ninputs = [\"{}/*.txt\"]\n\
             reducers = 4\nsplit_size = \"32MiB\"\n[limits]\nmemory = \"512MiB\"\ntimeout = \"10m\"\n",
            guests::WORDCOUNT,
            corpus.display()
        ),
    )
    .unwrap();
    path
}

fn report(name: &str, bytes: u64, took: Duration, native_mbs: f64, rss: f64, rss_what: &str) {
    let mbs = bytes as f64 / 1e6 / took.as_secs_f64();
    println!(
        "  {name:<28} {mbs:>8.1} MB/s  ({:.2} s)  ratio to native {:.2}  peak RSS {rss:.0} MiB ({rss_what})",
        took.as_secs_f64(),
        mbs / native_mbs
    );
}

fn embedded(files: &[PathBuf], bytes: u64, native_mbs: f64, expected: (usize, u64)) {
    let work = tempfile::tempdir().unwrap();
    let job = job_file(work.path(), files[0].parent().unwrap());
    let out = work.path().join("out");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .args(["run", job.to_str().unwrap(), "--workers", "2", "--data"])
        .arg(work.path().join("data"))
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, rss, _) = watch(child, &[]);
    let took = started.elapsed();
    assert!(status.success(), "sandmill run failed");
    assert_eq!(
        read_outputs(&out),
        expected,
        "the job's counts differ from native"
    );
    report(
        "embedded (sandmill run)",
        bytes,
        took,
        native_mbs,
        rss,
        "the whole process",
    );
    // The same run from the job's acceptance (splits cut and stored) to
    // its end: the maps and reduces alone.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = work.path().join("data/sandmill.db");
    let job = runtime.block_on(async {
        let store = sandmill_server::store::Store::connect(db.to_str().unwrap())
            .await
            .unwrap();
        store.job(1).await.unwrap().unwrap()
    });
    let job_took = Duration::from_millis((job.finished_at.unwrap() - job.created_at) as u64);
    report(
        "  of which the job alone",
        bytes,
        job_took,
        native_mbs,
        rss,
        "the whole process",
    );
}

fn fleet(files: &[PathBuf], bytes: u64, native_mbs: f64, expected: (usize, u64)) {
    let pg = support::Postgres::start();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let spawn = |args: &[&str]| {
        support::Killed::spawn(
            Command::new(env!("CARGO_BIN_EXE_sandmill"))
                .args(args)
                .arg("--nats")
                .arg(nats.url_for(args))
                .arg("--cache-dir")
                .arg(cache.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let database = pg.database();
    let listen = format!("127.0.0.1:{port}");
    let _serve = spawn(&[
        "serve",
        "--auth",
        "open",
        "--database",
        &database,
        "--listen",
        &listen,
    ]);
    let workers = [
        spawn(&["worker", "--id", "w1", "--concurrency", "1"]),
        spawn(&["worker", "--id", "w2", "--concurrency", "1"]),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(support::wait_ready(
        &sandmill_server::tls::default_client(),
        &base,
    ));
    let work = tempfile::tempdir().unwrap();
    let job = job_file(work.path(), files[0].parent().unwrap());
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .env("XDG_STATE_HOME", state.path())
        .args(["--server", &base, "submit", job.to_str().unwrap(), "--wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pids: Vec<u32> = workers.iter().map(|w| w.0.id()).collect();
    let (status, _, rss) = watch(child, &pids);
    let took = started.elapsed();
    assert!(status.success(), "the job failed on the fleet");
    let out = work.path().join("out");
    let fetched = Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .env("XDG_STATE_HOME", state.path())
        .args(["--server", &base, "fetch", "LAST", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(fetched.status.success());
    assert_eq!(
        read_outputs(&out),
        expected,
        "the fleet's counts differ from native"
    );
    report(
        "fleet (2 workers x 1 slot)",
        bytes,
        took,
        native_mbs,
        rss,
        "the larger worker",
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| parts.is_empty() || parts.iter().any(|p| p == name);
    let bytes: u64 = std::env::var("SANDMILL_MR_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(if benching { 1 << 30 } else { 16 << 20 });
    let files = corpus(bytes);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    // Warm the page cache for both sides alike.
    let (_, _, _) = native(&files);
    let (took, distinct, total) = native(&files);
    let native_mbs = bytes as f64 / 1e6 / took.as_secs_f64();
    println!(
        "word count of {:.0} MiB in {FILES} files ({distinct} distinct words, {total} words):",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  {:<28} {native_mbs:>8.1} MB/s  ({:.2} s)",
        "native, 1 thread, HashMap",
        took.as_secs_f64()
    );
    if wanted("embedded") {
        embedded(&files, bytes, native_mbs, (distinct, total));
    }
    if wanted("fleet") {
        fleet(&files, bytes, native_mbs, (distinct, total));
    }
}
