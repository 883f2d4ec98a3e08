//! score: one sales record (a JSON object with `region`, `amount` and
//! `quantity`) in, one `region<TAB>score` line out, where the score is
//! amount × quantity × the `weight` parameter (default 1). A record whose
//! region is the `fail_region` parameter fails (to test what follows a
//! failed step); with `hang_first_attempt = true`, every first attempt
//! spins until its time limit stops it (a failure that is retried, to test
//! a step's retries).

use sandmill_sdk::{Context, Error, Result};
use serde_json::Value;

#[sandmill_sdk::task]
fn run(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let params: Value = ctx.params()?;
    if params.get("hang_first_attempt").and_then(Value::as_bool) == Some(true) && ctx.attempt() == 0
    {
        let mut x = input.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    let weight = params.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
    let record: Value = serde_json::from_slice(input.trim_ascii())?;
    let region = record
        .get("region")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::msg("the record has no region"))?;
    if params.get("fail_region").and_then(Value::as_str) == Some(region) {
        return Err(Error::msg(format!(
            "region {region} is refused by fail_region"
        )));
    }
    let number = |key: &str| -> Result<f64> {
        match record.get(key) {
            Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0)),
            Some(Value::String(s)) => Ok(s.trim().parse()?),
            _ => Err(Error::msg(format!("the record has no {key}"))),
        }
    };
    let score = number("amount")? * number("quantity")? * weight;
    ctx.counter("records", 1);
    Ok(format!("{region}\t{score}\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_its_region_and_score() {
        let out = run(
            br#"{"region":"north","amount":2.5,"quantity":"4"}"#,
            &mut Context::local(),
        )
        .unwrap();
        assert_eq!(out, b"north\t10\n");
    }
}
