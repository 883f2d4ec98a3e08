//! progress: works through `steps` steps, burning `spin` loop iterations
//! each, and reports its progress after every step (`host.progress`), so
//! a client following the job sees it move. With `log` it writes that line
//! to its log first; with `fail` it fails at the end with that message.
//! Returns its parameters' `echo` (or nothing).
//! Numbers may come as JSON numbers or as strings (a sweep's CSV rows).
//!
//! ```sh
//! sandmill exec progress.wasm --params '{"steps": 4, "spin": 100000}'
//! ```

use sandmill_sdk::{Context, Error, Result};
use serde_json::Value;

/// Burns `iterations` loop turns the optimiser cannot remove.
fn spin(iterations: u64) {
    for i in 0..iterations {
        std::hint::black_box(i);
    }
}

/// A whole number from a number or a string; 0 when absent.
fn number(params: &Value, key: &str) -> Result<u64> {
    match &params[key] {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| Error::msg(format!("{key}: not a whole number"))),
        Value::String(s) => s
            .parse()
            .map_err(|_| Error::msg(format!("{key}: not a whole number"))),
        _ => Err(Error::msg(format!("{key}: not a whole number"))),
    }
}

#[sandmill_sdk::task]
fn run(_input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let params: Value = ctx.params()?;
    let steps = number(&params, "steps")?;
    let iterations = number(&params, "spin")?;
    if let Some(line) = params["log"].as_str() {
        eprintln!("{line}");
    }
    for step in 0..steps {
        spin(iterations);
        ctx.progress(step + 1, steps);
    }
    if let Some(message) = params["fail"].as_str().filter(|m| !m.is_empty()) {
        return Err(Error::msg(message.to_owned()));
    }
    Ok(params["echo"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reaches_the_last_step_and_fail_fails() {
        let mut ctx = Context::local().with_params(r#"{"steps": "3", "echo": "hi"}"#);
        assert_eq!(run(b"", &mut ctx).unwrap(), b"hi");
        assert_eq!(ctx.last_progress(), Some((3, 3)));
        let mut ctx = Context::local().with_params(r#"{"fail": "no"}"#);
        assert!(run(b"", &mut ctx).is_err());
    }
}
