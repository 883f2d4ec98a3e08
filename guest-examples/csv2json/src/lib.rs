//! csv2json: a preprocessor turning CSV with a header row into JSON Lines,
//! one object per row keyed by the header's column names.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::preprocess]
fn preprocess(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers()?.clone();
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut rows = 0u64;
    for record in reader.records() {
        let record = record?;
        let object: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect();
        serde_json::to_writer(&mut out, &object)?;
        out.push(b'\n');
        rows += 1;
    }
    ctx.counter("rows", rows as i64);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_objects_keyed_by_the_header() {
        let out = preprocess(b"name,n\nada,1\n\"b, c\",2\n", &mut Context::local()).unwrap();
        assert_eq!(
            out,
            b"{\"name\":\"ada\",\"n\":\"1\"}\n{\"name\":\"b, c\",\"n\":\"2\"}\n"
        );
    }
}
