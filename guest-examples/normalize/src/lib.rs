//! normalize: a preprocessor for JSON Lines records: keys and text values
//! trimmed and lower-cased, and numbers written as text made numbers.

use sandmill_sdk::{Context, Result};
use serde_json::{Map, Value};

#[sandmill_sdk::preprocess]
fn preprocess(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    for line in input.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let record: Map<String, Value> = serde_json::from_slice(line)?;
        let record: Map<String, Value> = record
            .into_iter()
            .map(|(key, value)| (key.trim().to_lowercase(), clean(value)))
            .collect();
        serde_json::to_writer(&mut out, &record)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn clean(value: Value) -> Value {
    match value {
        Value::String(text) => {
            let text = text.trim();
            match text.parse::<f64>() {
                Ok(n) if text.chars().any(|c| c.is_ascii_digit()) => {
                    serde_json::Number::from_f64(n)
                        .map_or(Value::String(text.to_owned()), Value::Number)
                }
                _ => Value::String(text.to_lowercase()),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lowered_and_numbers_parsed() {
        let out = preprocess(
            b"{\" Region\":\" North \",\"amount\":\"12.5\"}\n",
            &mut Context::local(),
        )
        .unwrap();
        // Key order depends on serde_json's features in the build.
        let record: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            record,
            serde_json::json!({"amount": 12.5, "region": "north"})
        );
        assert!(out.ends_with(b"}\n"));
    }
}
