//! `sandmill replay TASK [--attempt N]`: one attempt of a task run again
//! here, in the same sandbox a worker uses, from what the server recorded
//! of it (module, preprocessor, inputs, params, limits, grants, seed,
//! attempt number): its log goes to stderr, its output to stdout, and its
//! classified error is printed as the fleet recorded it, with whether the
//! two agree.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use sandmill_runtime::blob::{BlobStore, DirBlobStore};
use sandmill_runtime::broker::MemoryBroker;
use sandmill_runtime::message::{InputPart, OutputRef, TaskMessage, Verdict};
use sandmill_runtime::sandbox::{Grants, Limits, Sandbox, SandboxConfig};
use sandmill_runtime::worker::{Ran, Worker};
use sandmill_server::api::views::CallView;
use sandmill_server::jobfile::LimitsSection;
use sandmill_server::store::types::Named;

use super::out::tell;

/// Exit code when the replayed call failed (as `sandmill exec`'s).
const EXIT_CALL_FAILED: u8 = 2;

/// A `sha256:<hex>` reference's hash.
pub fn hash_of(reference: &str) -> &str {
    reference.strip_prefix("sha256:").unwrap_or(reference)
}

/// The task message a worker would have run for this call.
fn message(call: &CallView) -> anyhow::Result<TaskMessage> {
    let mut limits = Limits::default();
    LimitsSection {
        memory: Some(call.limits.memory.clone()),
        timeout: Some(call.limits.timeout.clone()),
        fuel: call.limits.fuel,
        output: Some(call.limits.output.clone()),
        log: Some(call.limits.log.clone()),
        queue_timeout: None,
    }
    .apply_to(&mut limits)
    .map_err(|e| anyhow::anyhow!("the recorded limits do not parse: {e}"))?;
    let allow = |name: &str| call.grants.allow.iter().any(|a| a == name);
    let grants = Grants {
        clock: allow("clock"),
        random: allow("random"),
        network: allow("network"),
        // Your own machine: wherever the guest connects.
        hosts: vec![sandmill_runtime::sandbox::net::NetRule::Any],
        // Values are secrets the server never shows: set, but empty.
        env: call
            .grants
            .env
            .iter()
            .map(|k| (k.clone(), String::new()))
            .collect(),
        dirs: Vec::new(),
    };
    Ok(TaskMessage {
        task_id: call.task_id,
        job_id: call.job_id,
        attempt: call.attempt,
        priority: 0,
        tenant: String::new(),
        kind: call.kind,
        module: hash_of(&call.module).to_owned(),
        input: call.input.blob.as_deref().map(|b| hash_of(b).to_owned()),
        input_name: call.input.name.clone(),
        params: call.params.to_string(),
        params_blob: None,
        limits,
        grants,
        labels: Default::default(),
        seed: Some(call.seed),
        shuffle: None,
        inputs: call
            .inputs
            .iter()
            .map(|p| InputPart {
                hash: hash_of(&p.blob).to_owned(),
                offset: p.offset,
                len: p.len,
            })
            .collect(),
        preprocess: call.preprocess.as_deref().map(|p| hash_of(p).to_owned()),
        output_blob: false,
        delivered: 1,
        ticket: String::new(),
        published_ms: None,
        traceparent: None,
    })
}

/// Runs the call on blobs fetched already (hash, bytes), and tells how it
/// compares with the recorded attempt.
pub async fn replay(call: &CallView, blobs: Vec<(String, Vec<u8>)>) -> anyhow::Result<ExitCode> {
    let task = message(call)?;
    if !call.grants.env.is_empty() {
        tell!(
            "note: the environment ({}) is set empty here: its values are secret",
            call.grants.env.join(", ")
        );
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store = Arc::new(DirBlobStore::new(dir.path().join("blobs"))?);
    for (hash, bytes) in blobs {
        let stored = store.put(&bytes).await?;
        anyhow::ensure!(stored == hash, "blob sha256:{hash} arrived damaged");
    }
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: super::exec::default_cache_dir(),
        ..SandboxConfig::default()
    })?;
    let worker = Worker::new(
        "replay",
        sandbox,
        Arc::new(MemoryBroker::new()),
        store.clone(),
    );
    let (_keep, drain) = tokio::sync::watch::channel(false);
    let result = match worker.execute(&task, &drain, None).await {
        Ran::Done(result) => result,
        Ran::HandBack(error) => anyhow::bail!("cannot read the call's blobs: {error}"),
    };
    super::out::stderr(&result.log);
    let failed = result.verdict != Verdict::Succeeded;
    if failed {
        tell!(
            "error[{}]: {}",
            result.reason.map_or("-", |r| r.as_str()),
            result.error.as_deref().unwrap_or("")
        );
    } else {
        let output = match &result.output {
            Some(OutputRef::Inline(bytes)) => bytes.clone(),
            Some(OutputRef::Blob { hash, .. }) => store
                .get(hash)
                .await?
                .with_context(|| format!("output sha256:{hash} is missing"))?,
            None => Vec::new(),
        };
        super::out::stdout(&output).context("cannot write the output")?;
    }
    match &call.recorded {
        Some(recorded) => {
            let same = recorded.state == result.verdict
                && recorded.reason == result.reason
                && recorded.error == result.error;
            tell!(
                "attempt {} of task {} {} what was recorded ({}{})",
                call.attempt,
                call.task_id,
                if same { "reproduces" } else { "differs from" },
                recorded.state.name(),
                recorded
                    .reason
                    .map(|r| format!(" [{}]", r.as_str()))
                    .unwrap_or_default()
            );
        }
        None => tell!(
            "task {} has no recorded attempt to compare with",
            call.task_id
        ),
    }
    Ok(if failed {
        ExitCode::from(EXIT_CALL_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
