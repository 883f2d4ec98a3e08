//! controller: a control loop that keeps a target number of successful
//! outputs. Called by a schedule with `[controller]` on every firing, with
//! the schedule's state as JSON (its jobs' totals, its newest jobs, the
//! job file it may copy as `template`); returns the job files to submit
//! now, a JSON array: copies of the template for the outputs still
//! missing (`target` minus those done or on their way), at most `batch`
//! tasks at a time; none once the target is reached.
//!
//! Parameters: `{"target": 20, "batch": 5}`. See `examples/controller/`.

use sandmill_sdk::{Context, Error, Result};
use serde_json::{Value, json};

/// A whole number of the state, 0 when absent.
fn count(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// The job files to submit for `state`, given the target and batch size.
fn plan(state: &Value, target: i64, batch: i64) -> Result<Vec<Value>> {
    let totals = &state["totals"];
    let done = count(&totals["succeeded"]);
    // Tasks of its jobs that have not ended may still succeed.
    let open =
        count(&totals["tasks"]) - done - count(&totals["failed"]) - count(&totals["cancelled"]);
    let missing = (target - done - open).min(batch);
    if missing <= 0 {
        return Ok(Vec::new());
    }
    let mut job = state["template"].clone();
    if job.get("sweep").is_some_and(Value::is_object) {
        job["sweep"]["count"] = json!(missing);
        Ok(vec![job])
    } else if job.get("task").is_some_and(Value::is_object) {
        Ok(vec![job; usize::try_from(missing).unwrap_or(0)])
    } else {
        Err(Error::msg("the template has neither [sweep] nor [task]"))
    }
}

#[sandmill_sdk::task]
fn run(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let state: Value =
        serde_json::from_slice(input).map_err(|e| Error::msg(format!("state: {e}")))?;
    let params: Value = ctx.params()?;
    let target = params["target"].as_i64().unwrap_or(10);
    let batch = params["batch"].as_i64().unwrap_or(5).max(1);
    let jobs = plan(&state, target, batch)?;
    ctx.info(&format!(
        "{} of {target} succeeded; submitting {} job(s)",
        count(&state["totals"]["succeeded"]),
        jobs.len()
    ));
    serde_json::to_vec(&jobs).map_err(|e| Error::msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tasks: i64, succeeded: i64, failed: i64) -> Value {
        json!({
            "totals": {"tasks": tasks, "succeeded": succeeded, "failed": failed, "cancelled": 0},
            "template": {"name": "work", "sweep": {"module": "sha256:00", "count": 1}},
        })
    }

    #[test]
    fn it_submits_what_is_missing_in_batches_and_nothing_at_the_target() {
        assert_eq!(
            plan(&state(0, 0, 0), 12, 5).unwrap()[0]["sweep"]["count"],
            5
        );
        // 5 on their way, 5 done: 2 missing.
        assert_eq!(
            plan(&state(10, 5, 0), 12, 5).unwrap()[0]["sweep"]["count"],
            2
        );
        // Failures do not count: 10 done of 12, 3 failed.
        assert_eq!(
            plan(&state(13, 10, 3), 12, 5).unwrap()[0]["sweep"]["count"],
            2
        );
        assert!(plan(&state(12, 12, 0), 12, 5).unwrap().is_empty());
        assert!(plan(&state(15, 5, 0), 12, 5).unwrap().is_empty());
    }
}
