//! `sandmill new`: writes a guest crate that builds and runs as is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// What `sandmill new` is told.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The crate's name (letters, digits, `-` and `_`; starts with a letter).
    name: String,
    /// What the module exports.
    #[arg(long, value_enum, default_value_t = Kind::Task)]
    kind: Kind,
    /// Where to write it (default: `./NAME`); must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `sandmill-sdk` to build against, as a path (default: the SDK
    /// this `sandmill` was built from, if it is still there; else the
    /// published crate).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// The kinds of crate `sandmill new` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `map` and `reduce` (a word count).
    Mapreduce,
    /// A plain `task`.
    Task,
    /// A pure `preprocess` function.
    Preprocess,
}

/// The SDK in the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// Runs `sandmill new`.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = match &args.sdk {
        Some(path) => Some(
            path.canonicalize()
                .with_context(|| format!("--sdk {}: no such folder", path.display()))?,
        ),
        None => Path::new(BUILT_FROM_SDK).canonicalize().ok(),
    };
    if let Some(sdk) = &sdk
        && !sdk.join("Cargo.toml").is_file()
    {
        bail!("--sdk {}: no Cargo.toml there", sdk.display());
    }
    let files = files(&args.name, args.kind, sdk.as_deref());
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let wasm = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        args.name.replace('-', "_")
    );
    println!("wrote {} ({} crate)", dir.display(), kind_name(args.kind));
    println!("  cd {}", dir.display());
    println!("  cargo build --release --target wasm32-wasip2");
    println!(
        "  sandmill exec {wasm} --kind {} --input README.md",
        exec_kind(args.kind)
    );
    Ok(ExitCode::SUCCESS)
}

/// The `--kind` that `sandmill exec` runs the crate's module with.
fn exec_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Mapreduce => "map",
        other => kind_name(other),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Mapreduce => "mapreduce",
        Kind::Task => "task",
        Kind::Preprocess => "preprocess",
    }
}

/// A crate name Cargo takes and a file name that is safe anywhere.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_well
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "`{name}` is not a crate name: use letters, digits, `-` and `_`, starting with a letter (64 at most)"
        );
    }
    Ok(())
}

/// The files of the crate, by path within it.
fn files(name: &str, kind: Kind, sdk: Option<&Path>) -> Vec<(&'static str, String)> {
    let dependency = match sdk {
        Some(path) => format!(
            "sandmill-sdk = {{ path = {} }}",
            toml::Value::String(path.display().to_string())
        ),
        None => "sandmill-sdk = \"0.1\"".to_owned(),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the .wasm component; rlib: `cargo test` runs the functions natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
{dependency}

[profile.release]
panic = "abort"

# A crate of its own, even when written inside another workspace.
[workspace]
"#
    );
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let source = match kind {
        Kind::Mapreduce => MAPREDUCE,
        Kind::Task => TASK,
        Kind::Preprocess => PREPROCESS,
    };
    let kind_flag = exec_kind(kind);
    let readme = format!(
        "# {name}\n\nA Sandmill {kind} module.\n\n```sh\ncargo test                                   # the functions, natively\ncargo build --release --target wasm32-wasip2\nsandmill exec target/wasm32-wasip2/release/{wasm} --kind {kind_flag} --input README.md\n```\n",
        kind = kind_name(kind)
    );
    vec![
        ("Cargo.toml", manifest),
        ("src/lib.rs", source.to_owned()),
        ("README.md", readme),
        (".gitignore", "/target\n".to_owned()),
    ]
}

const MAPREDUCE: &str = r#"//! Word count: `map` counts the words of its input, `reduce` sums the
//! counts of one word over all inputs.

use sandmill_sdk::{Context, Emitter, Result, Values};

/// Calls `f` on every word of `input`: a maximal run of letters. Bytes that
/// are not UTF-8 separate words like any other non-letter.
fn words(input: &[u8], mut f: impl FnMut(&str)) {
    for chunk in input.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                f(word);
            }
        }
    }
}

/// Emits `word N` for every distinct word of the input: the counts are
/// summed inside the guest as the words are read (in-mapper combining).
#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    let mut count = 0;
    let mut counts = out.combining(|total: &mut u64, n| *total += n);
    words(input, |word| {
        counts.add(word, 1);
        count += 1;
    });
    drop(counts);
    ctx.counter("words", count);
    Ok(())
}

/// Sums the counts of one word.
#[sandmill_sdk::reduce]
fn reduce(key: &[u8], values: &mut Values, _ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    let mut total = 0u64;
    for value in values {
        total += std::str::from_utf8(&value)?.parse::<u64>()?;
    }
    out.emit(key, total.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        let mut out = Emitter::collecting();
        map(b"to be or not to be", &mut Context::local(), &mut out).unwrap();
        assert_eq!(out.records().len(), 4);
        assert!(out.records().contains(&(b"to".to_vec(), b"2".to_vec())));
        let mut summed = Emitter::collecting();
        let mut ones = Values::from_vec(vec![b"1".to_vec(), b"1".to_vec()]);
        reduce(b"be", &mut ones, &mut Context::local(), &mut summed).unwrap();
        assert_eq!(summed.records(), &[(b"be".to_vec(), b"2".to_vec())]);
    }
}
"#;

const TASK: &str = r#"//! A task: its input in, its output out. Here: the input's lines, numbered.

use sandmill_sdk::{Context, Result};

/// Numbers the input's lines (`1: ...`), counting them in a counter.
#[sandmill_sdk::task]
fn run(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 8);
    let mut lines = 0;
    for (n, line) in input.split_inclusive(|&b| b == b'\n').enumerate() {
        out.extend_from_slice(format!("{}: ", n + 1).as_bytes());
        out.extend_from_slice(line);
        lines += 1;
    }
    ctx.counter("lines", lines);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lines() {
        let out = run(b"a\nb\n", &mut Context::local()).unwrap();
        assert_eq!(out, b"1: a\n2: b\n");
    }
}
"#;

const PREPROCESS: &str = r#"//! A preprocessor: a pure function from bytes to bytes, run before a
//! step. Here: trailing whitespace trimmed and line endings made `\n`.

use sandmill_sdk::{Context, Result};

/// Trims each line's trailing whitespace and ends it with `\n`.
#[sandmill_sdk::preprocess]
fn normalize(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    for line in input.split(|&b| b == b'\n') {
        let end = line
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        out.extend_from_slice(&line[..end]);
        out.push(b'\n');
    }
    // The split yields one empty piece after a final newline.
    if input.ends_with(b"\n") || input.is_empty() {
        out.pop();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_unifies_line_endings() {
        let out = normalize(b"a  \r\nb\t\n", &mut Context::local()).unwrap();
        assert_eq!(out, b"a\nb\n");
    }
}
"#;
