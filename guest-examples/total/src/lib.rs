//! total: `region<TAB>score` lines in; the sum per region (sorted by
//! region) and the grand total out, one `name<TAB>sum` line each.

use std::collections::BTreeMap;

use sandmill_sdk::{Context, Error, Result};

#[sandmill_sdk::task]
fn run(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(input)?;
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (region, score) = line
            .split_once('\t')
            .ok_or_else(|| Error::msg(format!("`{line}` is not region<TAB>score")))?;
        let score: f64 = score.trim().parse()?;
        *sums.entry(region).or_default() += score;
        total += score;
    }
    ctx.counter("regions", sums.len() as i64);
    let mut out = String::new();
    for (region, sum) in &sums {
        out.push_str(&format!("{region}\t{sum}\n"));
    }
    out.push_str(&format!("total\t{total}\n"));
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_summed_per_region() {
        let out = run(b"north\t10\nsouth\t2\nnorth\t1.5\n", &mut Context::local()).unwrap();
        assert_eq!(out, b"north\t11.5\nsouth\t2\ntotal\t13.5\n");
    }
}
