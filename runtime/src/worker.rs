//! The worker loop: fetch task attempts from the broker, run each in the
//! sandbox, report how it ended. Knows nothing of the database; the same
//! loop runs inside `sandmill dev` and as `sandmill worker`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::blob::BlobStore;
use crate::broker::{Broker, BrokerError};
use crate::message::{INLINE_OUTPUT_BYTES, OutputRef, TaskEvent, TaskMessage, TaskResult, Verdict};
use crate::sandbox::{Call, CallInput, CallKind, ExecError, Module, Output, Sandbox};

/// Task attempts one worker loop takes per fetch.
pub const FETCH_BATCH: usize = 64;

/// Runs tasks from a broker in a sandbox.
#[derive(Clone)]
pub struct Worker {
    id: String,
    sandbox: Sandbox,
    broker: Arc<dyn Broker>,
    blobs: Arc<dyn BlobStore>,
    modules: Arc<Mutex<HashMap<String, Module>>>,
}

impl Worker {
    /// A worker named `id` (stable across restarts).
    pub fn new(
        id: impl Into<String>,
        sandbox: Sandbox,
        broker: Arc<dyn Broker>,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        Worker {
            id: id.into(),
            sandbox,
            broker,
            blobs,
            modules: Arc::default(),
        }
    }

    /// Fetches and runs tasks until the broker closes.
    pub async fn run(self) {
        loop {
            let batch = match self.broker.fetch(FETCH_BATCH).await {
                Ok(batch) => batch,
                Err(BrokerError::Closed) => return,
                Err(error) => {
                    tracing::warn!(%error, "fetch failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let started = batch
                .iter()
                .map(|t| TaskEvent::Started {
                    job_id: t.job_id,
                    task_id: t.task_id,
                    attempt: t.attempt,
                    worker: self.id.clone(),
                })
                .collect();
            if self.broker.report(started).await.is_err() {
                return;
            }
            for task in batch {
                let result = self.execute(&task).await;
                // Only once the result is durable is the task done with.
                if let Err(error) = self.broker.report(vec![TaskEvent::Finished(result)]).await {
                    tracing::warn!(%error, task_id = task.task_id, "reporting failed; the task will be redelivered");
                    if matches!(error, BrokerError::Closed) {
                        return;
                    }
                    continue;
                }
                if let Err(error) = self.broker.done(&task).await {
                    tracing::warn!(%error, task_id = task.task_id, "ack failed; a duplicate result may follow");
                }
            }
        }
    }

    async fn module(&self, hash: &str) -> Result<Module, ExecError> {
        if let Some(module) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(module.clone());
        }
        let bytes = self
            .blobs
            .get(hash)
            .await
            .map_err(|e| ExecError::Host(e.to_string()))?
            .ok_or_else(|| ExecError::Host(format!("module {hash} is not in the blob store")))?;
        let module = self.sandbox.load(&bytes)?;
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), module.clone());
        Ok(module)
    }

    async fn input(&self, task: &TaskMessage) -> Result<Vec<u8>, ExecError> {
        let Some(hash) = &task.input else {
            return Ok(Vec::new());
        };
        self.blobs
            .get(hash)
            .await
            .map_err(|e| ExecError::Host(e.to_string()))?
            .ok_or_else(|| ExecError::Host(format!("input {hash} is not in the blob store")))
    }

    /// Runs one attempt; every failure becomes a failed result.
    #[tracing::instrument(skip_all, fields(task_id = task.task_id, attempt = task.attempt))]
    pub async fn execute(&self, task: &TaskMessage) -> TaskResult {
        let mut result = TaskResult {
            job_id: task.job_id,
            task_id: task.task_id,
            attempt: task.attempt,
            worker: self.id.clone(),
            verdict: Verdict::Failed,
            reason: None,
            error: None,
            retryable: false,
            output: None,
            log: Vec::new(),
            log_truncated: false,
            counters: Default::default(),
            elapsed_ms: 0,
            fuel_used: None,
        };
        let prepared = async {
            let module = self.module(&task.module).await?;
            let input = self.input(task).await?;
            Ok::<_, ExecError>((module, input))
        }
        .await;
        let (module, input) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                fail(&mut result, &error);
                return result;
            }
        };
        let call = Call {
            kind: task.kind,
            input: match task.kind {
                CallKind::Reduce => {
                    let groups = crate::records::parse_groups(&input);
                    match groups {
                        Ok(groups) => CallInput::Groups(Box::new(groups.into_iter())),
                        Err(e) => {
                            fail(&mut result, &ExecError::Guest(format!("reduce input: {e}")));
                            return result;
                        }
                    }
                }
                _ => CallInput::Bytes(input),
            },
            combine: true,
            params: task.params.clone(),
            input_name: task.input_name.clone(),
            limits: task.limits.clone(),
            grants: task.grants.clone(),
            seed: task.task_id as u64,
        };
        let outcome = self.sandbox.call(&module, call).await;
        result.log = outcome.log;
        result.log_truncated = outcome.log_truncated;
        result.counters = outcome.counters;
        result.elapsed_ms = i64::try_from(outcome.elapsed.as_millis()).unwrap_or(i64::MAX);
        result.fuel_used = outcome.fuel_used;
        match outcome.result {
            Ok(output) => {
                let bytes = match output {
                    Output::Bytes(bytes) => bytes,
                    Output::Records(records) => {
                        let mut lines = Vec::with_capacity(records.bytes() + 2 * records.len());
                        // Writing into a Vec cannot fail.
                        let _ = records.write_lines(&mut lines);
                        lines
                    }
                };
                match self.store_output(bytes).await {
                    Ok(output) => {
                        result.verdict = Verdict::Succeeded;
                        result.output = Some(output);
                    }
                    Err(error) => fail(&mut result, &error),
                }
            }
            Err(error) => fail(&mut result, &error),
        }
        result
    }

    async fn store_output(&self, bytes: Vec<u8>) -> Result<OutputRef, ExecError> {
        if bytes.len() <= INLINE_OUTPUT_BYTES {
            return Ok(OutputRef::Inline(bytes));
        }
        let size = bytes.len() as u64;
        let hash = self
            .blobs
            .put(&bytes)
            .await
            .map_err(|e| ExecError::Host(e.to_string()))?;
        Ok(OutputRef::Blob { hash, size })
    }
}

fn fail(result: &mut TaskResult, error: &ExecError) {
    result.verdict = Verdict::Failed;
    result.reason = Some(error.reason().to_owned());
    result.error = Some(error.to_string());
    result.retryable = !error.is_deterministic();
}
