//! Turns a job file on disk into one the server accepts: module, input and
//! CSV paths (relative to the job file's folder) are read and uploaded, and
//! replaced by `sha256:` references and inline rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use std::io::Read;

use bytesize::ByteSize;
use sandmill_server::jobfile::{self, DEFAULT_SPLIT_SIZE, JobFile, NamedInput, SweepSection};

/// Where resolved files go: the embedded engine, or a server over HTTP.
#[async_trait::async_trait]
pub trait Upload {
    /// Uploads a module; returns its hash.
    async fn module(&self, bytes: Vec<u8>) -> anyhow::Result<String>;
    /// Uploads an input; returns its hash.
    async fn input(&self, bytes: Vec<u8>) -> anyhow::Result<String>;
}

fn is_ref(value: &str) -> bool {
    value.starts_with("sha256:")
}

/// Reads a job file and resolves it; `inputs` (files or folders) become
/// one task each.
pub async fn resolve(
    path: &Path,
    inputs: &[PathBuf],
    upload: &dyn Upload,
) -> anyhow::Result<JobFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        jobfile::from_json(text.as_bytes())
    } else {
        jobfile::from_toml(&text)
    };
    let mut job = parsed
        .and_then(|job| job.check().map(|()| job))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let local = |p: &str| -> PathBuf { base.join(p) };
    if let Some(controller) = &mut job.controller {
        controller.module = upload_module(&controller.module, &local, upload)
            .await
            .context("controller: module")?;
    }
    if !job.steps.is_empty() {
        // Checked before anything is uploaded: a bad graph costs nothing.
        job.graph(u64::MAX)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !inputs.is_empty() {
            bail!("--input: a pipeline names its inputs in its steps");
        }
        for step in &mut job.steps {
            step.module = upload_module(&step.module, &local, upload)
                .await
                .with_context(|| format!("step {}: module", step.name))?;
            if let Some(pre) = &step.preprocess {
                step.preprocess = Some(
                    upload_module(pre, &local, upload)
                        .await
                        .with_context(|| format!("step {}: preprocess", step.name))?,
                );
            }
            let inputs: Vec<String> = step
                .input
                .take()
                .into_iter()
                .chain(step.inputs.drain(..))
                .collect();
            for input in inputs {
                if input.starts_with("step:") || is_ref(&input) {
                    step.inputs.push(input);
                    continue;
                }
                let file = local(&input);
                let bytes = std::fs::read(&file).with_context(|| {
                    format!("step {}: input: cannot read {}", step.name, file.display())
                })?;
                step.inputs
                    .push(format!("sha256:{}", upload.input(bytes).await?));
            }
        }
        return Ok(job);
    }

    let module = job.template()?.module.to_owned();
    let module = if !is_ref(&module) && (module.ends_with(".wasm") || local(&module).is_file()) {
        let file = local(&module);
        let bytes = std::fs::read(&file)
            .with_context(|| format!("module: cannot read {}", file.display()))?;
        format!(
            "sha256:{}",
            upload.module(bytes).await.context("uploading the module")?
        )
    } else {
        module
    };
    if let Some(task) = &mut job.task {
        task.module = module.clone();
        if let Some(input) = task.input.clone().filter(|i| !is_ref(i)) {
            let file = local(&input);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("input: cannot read {}", file.display()))?;
            task.input_name.get_or_insert_with(|| file_name(&file));
            task.input = Some(format!("sha256:{}", upload.input(bytes).await?));
        }
    }
    if let Some(sweep) = &mut job.sweep {
        sweep.module = module.clone();
        if let Some(jobfile::SweepParams::Csv(csv)) = sweep.params.clone() {
            sweep.params = None;
            let file = local(&csv);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("sweep.params: cannot read {}", file.display()))?;
            sweep.rows = Some(jobfile::csv_rows(&bytes)?);
            sweep.columns = Some(jobfile::csv_columns(&bytes)?);
        }
        if let Some(input) = sweep.input.clone().filter(|i| !is_ref(i)) {
            let file = local(&input);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("input: cannot read {}", file.display()))?;
            sweep.input = Some(format!("sha256:{}", upload.input(bytes).await?));
        }
    }
    // A map-reduce job's settings are checked before its inputs are cut
    // and uploaded, so a bad one costs nothing.
    job.shuffle()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(mr) = &mut job.mapreduce {
        mr.module = module.clone();
        if mr.splits.is_none() {
            if !inputs.is_empty() {
                mr.inputs = inputs.iter().map(|p| p.display().to_string()).collect();
            }
            let split_size = match &mr.split_size {
                Some(text) => text.parse::<ByteSize>().map(|b| b.0.max(1)).map_err(|e| {
                    anyhow::anyhow!("mapreduce.split_size: `{text}` is not a size like 32MiB ({e})")
                })?,
                None => DEFAULT_SPLIT_SIZE,
            };
            let mut splits = Vec::new();
            for (i, input) in mr.inputs.iter().enumerate() {
                if is_ref(input) {
                    splits.push(NamedInput {
                        name: input.clone(),
                        input: input.clone(),
                    });
                    continue;
                }
                let files = expand(&local(input))
                    .with_context(|| format!("mapreduce.inputs[{i}]: `{input}`"))?;
                for file in files {
                    upload_splits(&file, split_size, upload, &mut splits).await?;
                }
            }
            mr.splits = Some(splits);
        }
        return Ok(job);
    }
    if !inputs.is_empty() {
        let mut files = Vec::new();
        for input in inputs {
            if input.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                    .with_context(|| format!("--input: cannot read {}", input.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                entries.sort();
                files.extend(entries);
            } else {
                files.push(input.clone());
            }
        }
        let mut named = Vec::new();
        for file in files {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("--input: cannot read {}", file.display()))?;
            named.push(NamedInput {
                name: file_name(&file),
                input: format!("sha256:{}", upload.input(bytes).await?),
            });
        }
        let (kind, params) = match job.task.take() {
            Some(task) => (task.kind, task.params),
            None => (job.sweep.as_ref().and_then(|s| s.kind.clone()), None),
        };
        if params.is_some() {
            bail!("--input with [task] params: move them to a [sweep] or drop --input");
        }
        job.sweep = Some(SweepSection {
            module,
            kind,
            inputs: Some(named),
            ..SweepSection::default()
        });
    }
    Ok(job)
}

/// Reads a subscription file and uploads the module it names by path.
pub async fn resolve_subscription(
    path: &Path,
    upload: &dyn Upload,
) -> anyhow::Result<sandmill_server::subscription::SubscriptionFile> {
    use sandmill_server::subscription;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        subscription::from_json(text.as_bytes())
    } else {
        subscription::from_toml(&text)
    };
    let mut file = parsed
        .and_then(|file| file.check().map(|_| file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let local = |p: &str| -> PathBuf { base.join(p) };
    file.module = upload_module(&file.module, &local, upload)
        .await
        .context("module")?;
    Ok(file)
}

/// A module named by a path is read and uploaded (`sha256:` after);
/// a ref or a spec stays as it is.
async fn upload_module(
    module: &str,
    local: &dyn Fn(&str) -> PathBuf,
    upload: &dyn Upload,
) -> anyhow::Result<String> {
    if is_ref(module) || !(module.ends_with(".wasm") || local(module).is_file()) {
        return Ok(module.to_owned());
    }
    let file = local(module);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(format!("sha256:{}", upload.module(bytes).await?))
}

/// The files a path names: itself, a folder's files (sorted), or a glob's
/// matches (sorted). Naming nothing is an error.
fn expand(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        return Ok(entries);
    }
    let pattern = path.to_string_lossy();
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .with_context(|| format!("`{pattern}` is not a glob"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no file matches {}", path.display());
    }
    Ok(files)
}

/// Cuts a file into splits that end at a line boundary, in as many
/// pieces of about equal size as `split_size` asks for (a line longer than
/// a piece is cut where it must be), and uploads them two at a time (the
/// store hashes each on its own thread), named after the file. Holds two
/// splits in memory.
async fn upload_splits(
    file: &Path,
    split_size: u64,
    upload: &dyn Upload,
    splits: &mut Vec<NamedInput>,
) -> anyhow::Result<()> {
    let name = file_name(file);
    let mut reader =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let length = reader.metadata().map(|m| m.len()).unwrap_or(0);
    let pieces = length.div_ceil(split_size.max(1)).max(1);
    let size = usize::try_from(length.div_ceil(pieces).max(1)).unwrap_or(usize::MAX);
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut done = false;
    let mut next = || -> anyhow::Result<Option<Vec<u8>>> {
        if done {
            return Ok(None);
        }
        let mut chunk = std::mem::take(&mut carry);
        let want = size.saturating_sub(chunk.len());
        chunk.reserve_exact(want);
        let read = (&mut reader)
            .take(want as u64)
            .read_to_end(&mut chunk)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let at_end = read < want;
        if chunk.is_empty() && !first {
            return Ok(None);
        }
        if !at_end && let Some(newline) = chunk.iter().rposition(|b| *b == b'\n') {
            carry = chunk.split_off(newline + 1);
        }
        first = false;
        done = at_end && carry.is_empty();
        Ok(Some(chunk))
    };
    loop {
        let (Some(one), two) = (next()?, next()?) else {
            break;
        };
        let hashes = match two {
            Some(two) => {
                let (a, b) = tokio::join!(upload.input(one), upload.input(two));
                vec![a?, b?]
            }
            None => vec![upload.input(one).await?],
        };
        for hash in hashes {
            splits.push(NamedInput {
                name: name.clone(),
                input: format!("sha256:{hash}"),
            });
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
