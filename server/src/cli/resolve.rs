//! Turns a job file on disk into one the server accepts: module, input and
//! CSV paths (relative to the job file's folder) are read and uploaded, and
//! replaced by `sha256:` references and inline rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use sandmill_server::jobfile::{self, JobFile, NamedInput, SweepSection};

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
        if let Some(csv) = sweep.params.take() {
            let file = local(&csv);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("sweep.params: cannot read {}", file.display()))?;
            sweep.rows = Some(jobfile::csv_rows(&bytes)?);
        }
        if let Some(input) = sweep.input.clone().filter(|i| !is_ref(i)) {
            let file = local(&input);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("input: cannot read {}", file.display()))?;
            sweep.input = Some(format!("sha256:{}", upload.input(bytes).await?));
        }
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

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
