//! Map-reduce jobs end to end, through the CLI and the HTTP API: outputs
//! equal a sequential reference computed here in plain Rust (embedded and
//! on a fleet of real processes, with guests that crash and workers that
//! are killed), and the scheduling properties of MIT 6.5840's lab 1 suite:
//! maps and reduces run in parallel, each map runs once when nothing
//! fails, the job is not done before its last reduce, a straggler gets a
//! backup. A map whose output is far larger than its shuffle buffer spills
//! and stays within it.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sandmill_runtime::records::parse_line;
use sandmill_runtime::shuffle::partition;
use sandmill_test_artifacts as guests;
use serde_json::Value;
use support::{ok, sandmill};

/// A command that ends on its own; killed (and the test failed) past this.
const LIMIT: Duration = Duration::from_secs(300);

/// The word rule of the word count guest: maximal runs of alphabetic
/// characters; invalid UTF-8 separates words.
fn words(input: &[u8], mut f: impl FnMut(&str)) {
    for chunk in input.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                f(word);
            }
        }
    }
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes `files` text files of about `bytes` each into `dir`: words with
/// non-ASCII letters, digits and punctuation, and invalid UTF-8 here and
/// there (inside words too). Returns their paths.
fn corpus(dir: &Path, files: usize, bytes: usize, seed: u64) -> Vec<PathBuf> {
    const VOCABULARY: &[&str] = &[
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "is",
        "you",
        "that",
        "it",
        "he",
        "was",
        "for",
        "on",
        "are",
        "as",
        "with",
        "his",
        "they",
        "I",
        "Straße",
        "naïve",
        "façade",
        "Ελλάδα",
        "мир",
        "日本語",
        "élève",
        "Øresund",
        "ﬁne",
        "Zürich",
        "crème",
        "brûlée",
        "x",
        "Quick",
        "quick",
    ];
    const SEPARATORS: &[&[u8]] = &[
        b" ", b", ", b". ", b" 42 ", b" -- ", b"\xff", b" \xc3 ", b"\t",
    ];
    let mut rng = Rng(seed | 1);
    let mut paths = Vec::new();
    for f in 0..files {
        let mut text = Vec::new();
        while text.len() < bytes {
            for _ in 0..(3 + rng.below(12)) {
                text.extend_from_slice(VOCABULARY[rng.below(VOCABULARY.len())].as_bytes());
                text.extend_from_slice(SEPARATORS[rng.below(SEPARATORS.len())]);
            }
            text.push(b'\n');
        }
        let path = dir.join(format!("f{f}.txt"));
        std::fs::write(&path, &text).unwrap();
        paths.push(path);
    }
    paths
}

fn reference_counts(files: &[PathBuf]) -> BTreeMap<Vec<u8>, u64> {
    let mut counts = BTreeMap::new();
    for file in files {
        words(&std::fs::read(file).unwrap(), |w| {
            *counts.entry(w.as_bytes().to_vec()).or_default() += 1;
        });
    }
    counts
}

fn reference_index(files: &[PathBuf]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut index: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        words(&std::fs::read(file).unwrap(), |w| {
            index
                .entry(w.as_bytes().to_vec())
                .or_default()
                .insert(name.clone());
        });
    }
    index
        .into_iter()
        .map(|(k, names)| {
            (
                k,
                names.into_iter().collect::<Vec<_>>().join(",").into_bytes(),
            )
        })
        .collect()
}

/// Reads `dir/part-NNNNN` for each of `reducers` partitions: each is sorted
/// by key, holds only keys of its partition, and no key twice.
fn read_parts(dir: &Path, reducers: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = BTreeMap::new();
    for r in 0..reducers {
        let path = dir.join(format!("part-{r:05}"));
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut last: Option<Vec<u8>> = None;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let (key, value) = parse_line(line).unwrap();
            assert_eq!(partition(&key, reducers), r, "a key in the wrong part");
            assert!(
                last.as_ref().is_none_or(|l| *l < key),
                "part {r} not sorted"
            );
            last = Some(key.clone());
            assert!(all.insert(key, value).is_none(), "a key in two parts");
        }
    }
    assert!(!dir.join(format!("part-{reducers:05}")).exists());
    all
}

fn counts_as_bytes(counts: &BTreeMap<Vec<u8>, u64>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    counts
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string().into_bytes()))
        .collect()
}

/// `sandmill run JOB`, to its end (bounded).
fn run_job(state: &Path, job: &Path) -> Output {
    support::output_within(sandmill(state).args(["run", job.to_str().unwrap()]), LIMIT)
}

/// `sandmill run JOB -o OUT`, which must succeed; its stdout.
fn run_to(state: &Path, job: &Path, out: &Path) -> String {
    ok(&support::output_within(
        sandmill(state).args(["run", job.to_str().unwrap(), "-o", out.to_str().unwrap()]),
        LIMIT,
    ))
}

/// A `[mapreduce]` job file over `inputs` (a glob), in `dir`.
fn job_file(dir: &Path, name: &str, module: &str, inputs: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[mapreduce]\nmodule = \"{module}\"\n\
             inputs = [\"{inputs}\"]\n{extra}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn word_count_and_index_equal_a_sequential_reference_embedded() {
    let work = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let corpus_dir = work.path().join("corpus");
    std::fs::create_dir(&corpus_dir).unwrap();
    // Seven files of 20 KiB cut into 4 KiB splits: about 35 maps.
    let files = corpus(&corpus_dir, 7, 20 << 10, 7);
    let glob = format!("{}/*.txt", corpus_dir.display());
    let counts = counts_as_bytes(&reference_counts(&files));
    let index = reference_index(&files);

    let wordcount = job_file(
        work.path(),
        "wc",
        guests::WORDCOUNT,
        &glob,
        "reducers = 3\nsplit_size = \"4KiB\"",
    );
    let out = work.path().join("wc-out");
    let ran = support::output_within(
        sandmill(state.path()).args([
            "run",
            wordcount.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        LIMIT,
    );
    ok(&ran);
    let told = String::from_utf8_lossy(&ran.stderr);
    assert!(told.contains("succeeded"), "{told}");
    let total: u64 = counts
        .values()
        .map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        told.contains(&format!("words={total}")),
        "the guests' counters, summed: {told}"
    );
    assert_eq!(read_parts(&out, 3), counts);

    // The same when a third of the first attempts (maps and reduces) trap.
    let failing = job_file(
        work.path(),
        "wc-failing",
        guests::WORDCOUNT,
        &glob,
        "reducers = 3\nsplit_size = \"4KiB\"\n[mapreduce.params]\nfail_first_attempts = true",
    );
    let out = work.path().join("wc-failing-out");
    run_to(state.path(), &failing, &out);
    assert_eq!(read_parts(&out, 3), counts);

    let indexer = job_file(
        work.path(),
        "ix",
        guests::INDEXER,
        &glob,
        "reducers = 2\nsplit_size = \"4KiB\"\nbuffer = \"64KiB\"",
    );
    let out = work.path().join("ix-out");
    run_to(state.path(), &indexer, &out);
    assert_eq!(read_parts(&out, 2), index);
    let failing = job_file(
        work.path(),
        "ix-failing",
        guests::INDEXER,
        &glob,
        "reducers = 2\nsplit_size = \"4KiB\"\n[mapreduce.params]\nfail_first_attempts = true",
    );
    let out = work.path().join("ix-failing-out");
    run_to(state.path(), &failing, &out);
    assert_eq!(read_parts(&out, 2), index);
}

#[test]
fn a_map_only_job_writes_one_part_per_split_and_bad_files_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("a.txt"),
        "one nation\ntwo\nthree nations\n",
    )
    .unwrap();
    std::fs::write(work.path().join("b.txt"), "no match\nNATION\n").unwrap();
    let glob = format!("{}/*.txt", work.path().display());
    let grep = job_file(
        work.path(),
        "grep",
        guests::GREP,
        &glob,
        "reducers = 0\n[mapreduce.params]\npattern = \"(?i)nation\"",
    );
    let out = work.path().join("out");
    run_to(state.path(), &grep, &out);
    assert_eq!(
        std::fs::read_to_string(out.join("part-00000")).unwrap(),
        "a.txt 1:one nation\na.txt 3:three nations\n"
    );
    assert!(
        std::fs::read_to_string(out.join("part-00001"))
            .unwrap()
            .contains("NATION")
    );

    // A map that fails on every attempt fails the job, naming the split
    // and the guest's message; no reduce runs.
    let failing = job_file(
        work.path(),
        "bad-params",
        guests::WORDCOUNT,
        &glob,
        "reducers = 2\n[mapreduce.params]\nno_such_knob = 1",
    );
    let failed = run_job(state.path(), &failing);
    assert_eq!(failed.status.code(), Some(2));
    let told = String::from_utf8_lossy(&failed.stderr);
    assert!(
        told.contains(concat!(
            ".txt) failed[guest-error]: guest error: ",
            "invalid task parameters: unknown field `no_such_knob`"
        )),
        "{told}"
    );
    // Two maps (one failed, the other failed or cancelled) and two
    // reduces that never ran.
    assert!(told.contains("4 task(s) (0 succeeded, "), "{told}");
    assert!(
        told.contains(" 2 cancelled)") || told.contains(" 3 cancelled)"),
        "{told}"
    );
    assert!(told.contains("`bad-params` failed"), "{told}");

    // Refused before anything runs: a glob that names nothing, a module
    // with no reduce for a job with reducers, too many reducers.
    let nothing = job_file(work.path(), "none", guests::WORDCOUNT, "/nowhere/*.txt", "");
    let refused = run_job(state.path(), &nothing);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no file matches"));
    let no_reduce = job_file(work.path(), "noreduce", guests::GREP, &glob, "reducers = 2");
    let refused = run_job(state.path(), &no_reduce);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("exports no reduce function"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let too_many = job_file(
        work.path(),
        "many",
        guests::WORDCOUNT,
        &glob,
        "reducers = 100001",
    );
    let refused = run_job(state.path(), &too_many);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mapreduce.reducers"));
    // A shuffle buffer below its floor, a split size of nothing.
    let tiny = job_file(
        work.path(),
        "tiny",
        guests::WORDCOUNT,
        &glob,
        "buffer = \"1KiB\"",
    );
    let refused = run_job(state.path(), &tiny);
    let told = String::from_utf8_lossy(&refused.stderr);
    assert!(
        told.contains("mapreduce.buffer") && told.contains("below the smallest buffer"),
        "{told}"
    );
    let zero = job_file(
        work.path(),
        "zero",
        guests::WORDCOUNT,
        &glob,
        "split_size = \"0B\"",
    );
    let refused = run_job(state.path(), &zero);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("mapreduce.split_size"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A `sandmill dev` on a free port, killed on drop, with its client.
struct Dev {
    dev: support::Killed,
    data: tempfile::TempDir,
    state: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    pid: u32,
}

impl Dev {
    async fn start() -> Dev {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let dev = support::Killed::spawn(&mut support::dev_command(data.path(), port));
        let pid = dev.0.id();
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &base).await;
        Dev {
            dev,
            data,
            state,
            base,
            http,
            pid,
        }
    }

    /// SIGKILL, then a new `sandmill dev` on the same folder and port.
    async fn crash_and_restart(&mut self) {
        self.dev.kill();
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        self.dev = support::Killed::spawn(&mut support::dev_command(self.data.path(), port));
        self.pid = self.dev.0.id();
        support::wait_ready(&self.http, &self.base).await;
    }

    /// Polls the job (the server may be restarting) until `done`.
    async fn until(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/v1/jobs/{id}", self.base))
                .send()
                .await
                && let Ok(job) = response.json::<Value>().await
                && done(&job)
            {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id}: {what} did not happen");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `sandmill submit FILE` against this server: the job's id.
    fn submit(&self, job: &Path) -> i64 {
        let out = ok(&support::output_within(
            sandmill(self.state.path()).args([
                "--server",
                &self.base,
                "submit",
                job.to_str().unwrap(),
            ]),
            LIMIT,
        ));
        out.trim().parse().unwrap()
    }

    /// `sandmill fetch ID -o OUT` against this server, which must succeed.
    fn fetch(&self, id: i64, out: &Path) {
        ok(&support::output_within(
            sandmill(self.state.path()).args([
                "--server",
                &self.base,
                "fetch",
                &id.to_string(),
                "-o",
                out.to_str().unwrap(),
            ]),
            LIMIT,
        ));
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the job until it ends, calling `seen` on every state read.
    async fn finish(&self, id: i64, mut seen: impl FnMut(&Value)) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let job = self.get(&format!("/v1/jobs/{id}")).await;
            seen(&job);
            if job["status"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {job}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every task of the job with its attempts.
    async fn tasks(&self, id: i64) -> Vec<Value> {
        let page = self.get(&format!("/v1/jobs/{id}/tasks?limit=1000")).await;
        let mut tasks = Vec::new();
        for task in page["items"].as_array().unwrap() {
            tasks.push(self.get(&format!("/v1/tasks/{}", task["id"])).await);
        }
        tasks
    }

    /// Peak resident memory of the server process (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib << 10
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn time_ms(text: &Value) -> i64 {
    let at = humantime::parse_rfc3339_weak(text.as_str().unwrap()).unwrap();
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// (start, end) of each attempt of these tasks, by the records.
fn spans(tasks: &[&Value]) -> Vec<(i64, i64)> {
    tasks
        .iter()
        .flat_map(|t| t["attempts"].as_array().unwrap().iter())
        .map(|a| (time_ms(&a["started_at"]), time_ms(&a["finished_at"])))
        .collect()
}

fn overlap(spans: &[(i64, i64)]) -> bool {
    spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1))
}

#[test]
fn maps_and_reduces_run_in_parallel_once_each_and_the_job_ends_after_its_last_reduce() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let work = tempfile::tempdir().unwrap();
        let files = corpus(work.path(), 4, 4 << 10, 11);
        let glob = format!("{}/*.txt", work.path().display());
        // Each map and reduce burns about a quarter of a second.
        let job = job_file(
            work.path(),
            "parallel",
            guests::WORDCOUNT,
            &glob,
            "reducers = 2\n[mapreduce.params]\nspin = 3000000000",
        );
        let id = dev.submit(&job);
        let mut phases = Vec::new();
        let finished = dev
            .finish(id, |job| {
                let phase = job["mapreduce"]["phase"].as_str().unwrap().to_owned();
                if phases.last() != Some(&phase) {
                    phases.push(phase);
                }
            })
            .await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        assert_eq!(phases.last().map(String::as_str), Some("done"));
        assert!(
            phases.contains(&"reduce".to_owned()),
            "never seen reducing: {phases:?}"
        );
        assert_eq!(finished["mapreduce"]["maps"]["succeeded"], 4);
        assert_eq!(finished["mapreduce"]["reduces"]["succeeded"], 2);
        assert_eq!(finished["tasks"]["total"], 6);

        let tasks = dev.tasks(id).await;
        assert_eq!(tasks.len(), 6);
        let maps: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["task"]["seq"].as_i64().unwrap() < 4)
            .collect();
        let reduces: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["task"]["seq"].as_i64().unwrap() >= 4)
            .collect();
        for task in &tasks {
            assert_eq!(
                task["attempts"].as_array().unwrap().len(),
                1,
                "ran more than once: {task}"
            );
        }
        assert!(
            overlap(&spans(&maps)),
            "maps never overlapped: {:?}",
            spans(&maps)
        );
        assert!(
            overlap(&spans(&reduces)),
            "reduces never overlapped: {:?}",
            spans(&reduces)
        );
        // Every reduce started after the last map ended, and the job
        // ended after the last reduce was recorded.
        let last_map = spans(&maps).iter().map(|s| s.1).max().unwrap();
        assert!(spans(&reduces).iter().all(|s| s.0 >= last_map - 5));
        let last_reduce = reduces
            .iter()
            .map(|t| time_ms(&t["task"]["finished_at"]))
            .max()
            .unwrap();
        assert!(time_ms(&finished["finished_at"]) >= last_reduce);

        // `fetch` writes the reduces' outputs, numbered by partition.
        let out = work.path().join("out");
        dev.fetch(id, &out);
        assert_eq!(
            read_parts(&out, 2),
            counts_as_bytes(&reference_counts(&files))
        );
        let status = ok(&support::output_within(
            sandmill(dev.state.path()).args(["--server", &dev.base, "status", &id.to_string()]),
            LIMIT,
        ));
        assert!(
            status.contains("phase: done; maps: 4 succeeded; reduces: 2 succeeded"),
            "{status}"
        );
        assert!(status.contains("counters: words="), "{status}");

        // Over HTTP, with inputs uploaded by the client: one split each.
        let module = support::upload_module(&dev.http, &dev.base, guests::WORDCOUNT).await;
        let mut inputs = Vec::new();
        for text in ["one fish two fish", "red fish blue fish"] {
            let input: Value = dev
                .http
                .post(format!("{}/v1/inputs", dev.base))
                .header("content-type", "application/octet-stream")
                .body(text)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            inputs.push(input["input"].as_str().unwrap().to_owned());
        }
        let created: Value = dev
            .http
            .post(format!("{}/v1/jobs", dev.base))
            .json(&serde_json::json!({
                "name": "api",
                "mapreduce": {"module": module, "inputs": inputs, "reducers": 1}
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{created}"));
        let finished = dev.finish(id, |_| {}).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let reduce = dev
            .tasks(id)
            .await
            .into_iter()
            .find(|t| t["task"]["seq"] == 2)
            .unwrap();
        let output = dev
            .http
            .get(format!(
                "{}/v1/tasks/{}/output",
                dev.base, reduce["task"]["id"]
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(output, "blue 1\nfish 4\none 1\nred 1\ntwo 1\n");
    });
}

#[test]
fn a_straggler_gets_a_backup_and_the_job_ends_near_the_median_time() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let work = tempfile::tempdir().unwrap();
        let files = corpus(work.path(), 6, 2 << 10, 13);
        let glob = format!("{}/*.txt", work.path().display());
        // f3.txt's first attempt burns 200 billion iterations (tens of
        // seconds); the others, and its backup, almost nothing.
        let params = "[mapreduce.params]\nslow_input = \"f3.txt\"\nslow_spin = 200000000000";
        let job = job_file(
            work.path(),
            "straggler",
            guests::WORDCOUNT,
            &glob,
            &format!("reducers = 1\n{params}"),
        );
        let started = Instant::now();
        let id = dev.submit(&job);
        let finished = dev.finish(id, |_| {}).await;
        let took = started.elapsed();
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let tasks = dev.tasks(id).await;
        let straggler = tasks
            .iter()
            .find(|t| t["task"]["input"]["name"] == "f3.txt")
            .unwrap();
        let attempts = straggler["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{straggler}");
        assert_eq!(
            attempts[0]["attempt"], 1,
            "the backup's result counts: {straggler}"
        );
        // The backup starts once the straggler has run past twice the
        // median and a second (checked every second).
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let out = work.path().join("out");
        dev.fetch(id, &out);
        assert_eq!(
            read_parts(&out, 1),
            counts_as_bytes(&reference_counts(&files))
        );

        // Without speculation the job waits for the straggler.
        let job = job_file(
            work.path(),
            "no-speculation",
            guests::WORDCOUNT,
            &glob,
            &format!("reducers = 1\nspeculation = false\n{params}"),
        );
        let started = Instant::now();
        let id = dev.submit(&job);
        let finished = dev.finish(id, |_| {}).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let slow = started.elapsed();
        println!("with speculation {took:?}, without {slow:?}");
        assert!(
            slow > took * 2,
            "with speculation {took:?}, without {slow:?}"
        );
    });
}

#[test]
fn a_map_ten_times_its_buffer_spills_and_memory_stays_within_the_buffer() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let work = tempfile::tempdir().unwrap();
        let files = corpus(work.path(), 1, 64 << 10, 17);
        let glob = format!("{}/*.txt", work.path().display());
        // Warm up: the module compiled, the pools made.
        let warm = job_file(
            work.path(),
            "warm",
            guests::WORDCOUNT,
            &glob,
            "reducers = 1",
        );
        let id = dev.submit(&warm);
        assert_eq!(dev.finish(id, |_| {}).await["status"], "succeeded");
        let before = dev.peak_rss();

        // One map emitting every word of 64 KiB × 3000 (about 300 MiB of
        // records) through an 8 MiB buffer: 35 spills or more.
        let buffer = 8u64 << 20;
        let big = job_file(
            work.path(),
            "big",
            guests::WORDCOUNT,
            &glob,
            concat!(
                "reducers = 2\nbuffer = \"8MiB\"\n",
                "[mapreduce.params]\nplain = true\nrepeat = 3000\n",
                "[limits]\noutput = \"1GiB\"\ntimeout = \"5m\""
            ),
        );
        let id = dev.submit(&big);
        let finished = dev.finish(id, |_| {}).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let grew = dev.peak_rss().saturating_sub(before);
        let expected: BTreeMap<Vec<u8>, Vec<u8>> = reference_counts(&files)
            .into_iter()
            .map(|(k, v)| (k, (v * 3000).to_string().into_bytes()))
            .collect();
        let out = work.path().join("out");
        dev.fetch(id, &out);
        assert_eq!(read_parts(&out, 2), expected);
        let emitted: u64 = expected
            .iter()
            .map(|(k, v)| {
                let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
                n * (k.len() as u64 + 1)
            })
            .sum();
        println!(
            "map output {} MiB through a {} MiB buffer; peak RSS grew {} MiB",
            emitted >> 20,
            buffer >> 20,
            grew >> 20
        );
        assert!(
            emitted > 10 * buffer,
            "the map's output is only {emitted} bytes"
        );
        // The buffer, the sort's index of it, a run read back to store it,
        // and the reduce's merge: a few buffers, never the output.
        assert!(grew < 4 * buffer + (32 << 20), "peak RSS grew {grew} bytes");
    });
}

#[test]
fn sigkill_of_dev_mid_map_and_mid_reduce_loses_nothing() {
    runtime().block_on(async {
        let mut dev = Dev::start().await;
        let work = tempfile::tempdir().unwrap();
        let files = corpus(work.path(), 6, 8 << 10, 29);
        let glob = format!("{}/*.txt", work.path().display());
        // Six maps (a file each) and two reduces of about a second each.
        let job = job_file(
            work.path(),
            "crash",
            guests::WORDCOUNT,
            &glob,
            concat!(
                "reducers = 2\nspeculation = false\n",
                "[mapreduce.params]\nspin = 12000000000"
            ),
        );
        let id = dev.submit(&job);
        dev.until(id, "two maps done", |j| {
            j["mapreduce"]["maps"]["succeeded"].as_i64().unwrap_or(0) >= 2
        })
        .await;
        dev.crash_and_restart().await;
        dev.until(id, "reducing", |j| {
            let running = j["mapreduce"]["reduces"]["running"].as_i64().unwrap_or(0);
            j["mapreduce"]["phase"] == "reduce" && running >= 1
        })
        .await;
        let killed = dev.pid;
        dev.crash_and_restart().await;
        // The new process removed the spills its predecessor left.
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("sandmill-shuffle-{killed}-"))
            })
            .collect();
        assert!(left.is_empty(), "scratch folders left behind: {left:?}");
        let finished = dev.finish(id, |_| {}).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let out = work.path().join("out");
        dev.fetch(id, &out);
        assert_eq!(
            read_parts(&out, 2),
            counts_as_bytes(&reference_counts(&files))
        );
        let db = dev.data.path().join("sandmill.db");
        let store = sandmill_server::store::Store::connect(db.to_str().unwrap())
            .await
            .unwrap();
        let (tasks, successes, duplicated) = store.success_audit(id).await.unwrap();
        assert_eq!((successes, duplicated), (tasks, 0));
        assert_eq!(tasks, finished["tasks"]["total"].as_i64().unwrap());
    });
}

/// Keeps a child's stderr quiet unless SANDMILL_TEST_LOGS names a folder.
fn quiet(command: &mut Command) -> &mut Command {
    command.stdout(Stdio::null()).stderr(Stdio::null())
}

#[test]
fn on_a_fleet_outputs_equal_the_reference_through_crashing_guests_and_killed_workers() {
    runtime().block_on(async {
        let pg = support::Postgres::start();
        let database = pg.database();
        let nats = support::Nats::start();
        let cache = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        let fleet = |args: &[&str]| -> support::Killed {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
            command
                .args(args)
                .arg("--nats")
                .arg(nats.url_for(args))
                .arg("--cache-dir")
                .arg(cache.path());
            support::Killed::spawn(quiet(&mut command))
        };
        let listen = format!("127.0.0.1:{port}");
        let _serve = fleet(&[
            "serve",
            "--auth",
            "open",
            "--database",
            &database,
            "--listen",
            &listen,
            "--ack-wait",
            "5s",
        ]);
        support::wait_ready(&http, &base).await;
        let mut workers: Vec<support::Killed> = ["w1", "w2"]
            .iter()
            .map(|id| fleet(&["worker", "--id", id, "--concurrency", "1"]))
            .collect();
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let files = corpus(work.path(), 6, 12 << 10, 23);
        let glob = format!("{}/*.txt", work.path().display());
        let client = |args: &[&str]| -> String {
            let mut all = vec!["--server", base.as_str()];
            all.extend_from_slice(args);
            ok(&support::output_within(
                sandmill(state.path()).args(&all),
                LIMIT,
            ))
        };
        let wait = |id: i64, what: &'static str, done: fn(&Value) -> bool| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let deadline = Instant::now() + LIMIT;
                loop {
                    let job = support::job(&http, &base, id).await;
                    if done(&job) {
                        return job;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "job {id}: {what} did not happen: {job}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };

        // Word count and index with a third of first attempts trapping.
        let wordcount = job_file(
            work.path(),
            "wc",
            guests::WORDCOUNT,
            &glob,
            "reducers = 3\nsplit_size = \"4KiB\"\n[mapreduce.params]\nfail_first_attempts = true",
        );
        let id: i64 = client(&["submit", wordcount.to_str().unwrap()])
            .trim()
            .parse()
            .unwrap();
        let done = wait(id, "ending", |j| j["status"] != "running").await;
        let failed = http
            .get(format!("{base}/v1/jobs/{id}/tasks?state=failed"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(done["status"], "succeeded", "{done}\n{failed}");
        let out = work.path().join("wc");
        client(&["fetch", &id.to_string(), "-o", out.to_str().unwrap()]);
        let counts = counts_as_bytes(&reference_counts(&files));
        assert_eq!(read_parts(&out, 3), counts);
        let tasks: Value = http
            .get(format!("{base}/v1/jobs/{id}/tasks?limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let retried = tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["attempt"].as_i64().unwrap() > 0)
            .count();
        assert!(retried > 0, "no first attempt trapped: {tasks}");
        let indexer = job_file(
            work.path(),
            "ix",
            guests::INDEXER,
            &glob,
            "reducers = 2\nsplit_size = \"4KiB\"\n[mapreduce.params]\nfail_first_attempts = true",
        );
        let id: i64 = client(&["submit", indexer.to_str().unwrap()])
            .trim()
            .parse()
            .unwrap();
        let done = wait(id, "ending", |j| j["status"] != "running").await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let out = work.path().join("ix");
        client(&["fetch", &id.to_string(), "-o", out.to_str().unwrap()]);
        assert_eq!(read_parts(&out, 2), reference_index(&files));

        // A worker killed mid-map, another mid-reduce: each task that ran
        // on them runs again, and one attempt's output counts.
        let store = sandmill_server::store::Store::connect(&database)
            .await
            .unwrap();
        let index = reference_index(&files);
        let mut next_worker = 3;
        for (module, expected) in [(guests::WORDCOUNT, &counts), (guests::INDEXER, &index)] {
            let slow = job_file(
                work.path(),
                "kills",
                module,
                &glob,
                concat!(
                    "reducers = 2\nspeculation = false\n",
                    "[mapreduce.params]\nspin = 12000000000"
                ),
            );
            let id: i64 = client(&["submit", slow.to_str().unwrap()])
                .trim()
                .parse()
                .unwrap();
            wait(id, "a map finishing", |j| {
                j["mapreduce"]["maps"]["succeeded"].as_i64().unwrap_or(0) >= 2
            })
            .await;
            workers.remove(0).kill();
            let id_text = format!("w{next_worker}");
            workers.push(fleet(&["worker", "--id", &id_text, "--concurrency", "1"]));
            next_worker += 1;
            wait(id, "reducing", |j| {
                let running = j["mapreduce"]["reduces"]["running"].as_i64().unwrap_or(0);
                j["mapreduce"]["phase"] == "reduce" && running >= 1
            })
            .await;
            workers.remove(0).kill();
            let id_text = format!("w{next_worker}");
            workers.push(fleet(&["worker", "--id", &id_text, "--concurrency", "1"]));
            next_worker += 1;
            let done = wait(id, "ending", |j| j["status"] != "running").await;
            assert_eq!(done["status"], "succeeded", "{done}");
            let out = work.path().join(format!("kills-{id}"));
            client(&["fetch", &id.to_string(), "-o", out.to_str().unwrap()]);
            assert_eq!(&read_parts(&out, 2), expected, "{module}");
            let (tasks, successes, duplicated) = store.success_audit(id).await.unwrap();
            assert_eq!((successes, duplicated), (tasks, 0));
        }
        drop(pg);
    });
}
