//! Reading `/metrics` as Prometheus does: the text is parsed with
//! `prometheus-parse` (a Prometheus text-format parser) and checked line
//! by line against the OpenMetrics rules a scraper relies on.

use std::collections::{BTreeMap, HashMap};

/// `GET url` (a `/metrics`), its text parsed by [`parse`]; its content
/// type must be OpenMetrics'.
pub async fn scrape(http: &reqwest::Client, url: &str) -> (String, Scrape) {
    let response = http.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.expect("the metrics' text");
    let scrape = parse(&text);
    (text, scrape)
}

/// One scrape: its samples by name and labels.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name → its type (`counter`, `gauge`, `histogram`).
    pub families: BTreeMap<String, String>,
    /// Every sample: (sample name, labels) → value.
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The values of label `label` among the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, labels, _)| labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `text` and panics, saying what and where, unless every family
/// is well formed: `# TYPE` and `# HELP` once each before its samples,
/// names valid and prefixed `sandmill_`, counters' samples `_total` and
/// never below zero, histograms' buckets cumulative up to `+Inf` equal to
/// `_count`, no id as a label, and `# EOF` last.
pub fn parse(text: &str) -> Scrape {
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus-parse reads the text");
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "the text ends with # EOF"
    );
    let mut scrape = Scrape::default();
    let mut helped: HashMap<String, usize> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut sample_lines = 0;
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            *helped.entry(name.to_owned()).or_default() += 1;
            assert!(rest.len() > name.len() + 1, "{name} has an empty # HELP");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or_default());
            assert!(valid_name(name), "family name {name:?}");
            assert!(name.starts_with("sandmill_"), "{name} is not sandmill_");
            assert!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "{name}: type {kind:?}"
            );
            assert!(
                !(kind == "counter" && name.ends_with("_total")),
                "counter family {name} is named with its sample suffix"
            );
            assert!(
                scrape
                    .families
                    .insert(name.to_owned(), kind.to_owned())
                    .is_none(),
                "{name} has two # TYPE lines"
            );
            assert_eq!(
                helped.get(name),
                Some(&1),
                "{name}: one # HELP before its # TYPE"
            );
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        sample_lines += 1;
        let (family, kind) = current
            .clone()
            .unwrap_or_else(|| panic!("sample before any # TYPE: {line:?}"));
        let (name, labels, value) = sample(line);
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            _ => &["_bucket", "_sum", "_count", "_created"],
        };
        assert!(
            allowed.iter().any(|s| name == format!("{family}{s}")),
            "sample {name} outside its family {family} ({kind})"
        );
        for key in labels.keys() {
            assert!(valid_name(key), "label name {key:?} in {line:?}");
            assert!(
                !matches!(
                    key.as_str(),
                    "id" | "job_id" | "task_id" | "job" | "task" | "module"
                ),
                "an id as a label: {line:?}"
            );
        }
        assert!(!value.is_nan(), "NaN in {line:?}");
        if kind == "counter" || name.ends_with("_count") || name.ends_with("_bucket") {
            assert!(value >= 0.0, "a count below zero: {line:?}");
        }
        scrape.samples.push((name, labels, value));
    }
    // The parser saw as many samples (histograms fold their buckets).
    let folded: usize = parsed
        .samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    if folded != sample_lines {
        let mut theirs: BTreeMap<String, usize> = BTreeMap::new();
        for s in &parsed.samples {
            *theirs.entry(s.metric.clone()).or_default() += match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets.len(),
                _ => 1,
            };
        }
        panic!("prometheus-parse read {folded} of {sample_lines} samples: {theirs:?}\n{text}");
    }
    for (name, kind) in &scrape.families {
        if kind == "histogram" {
            check_histogram(&scrape, name);
        }
    }
    scrape
}

/// Each label set's buckets rise with `le` and end at `+Inf` = `_count`.
fn check_histogram(scrape: &Scrape, family: &str) {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let bucket = format!("{family}_bucket");
    for (name, labels, value) in &scrape.samples {
        if *name == bucket {
            let mut rest = labels.clone();
            let le = rest.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            series.entry(rest).or_default().push((le, *value));
        }
    }
    for (labels, buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}{labels:?}: buckets not cumulative in rising le: {buckets:?}"
        );
        let (le, top) = *buckets.last().unwrap();
        assert!(le.is_infinite(), "{family}{labels:?} ends without +Inf");
        let count = scrape
            .samples
            .iter()
            .find(|(n, l, _)| *n == format!("{family}_count") && *l == labels)
            .map(|(_, _, v)| *v);
        assert_eq!(
            count,
            Some(top),
            "{family}{labels:?}: +Inf bucket vs _count"
        );
    }
}

/// `name{k="v",...} value`.
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    let Some((name, labels)) = head.split_once('{') else {
        assert!(valid_name(head), "sample name {head:?}");
        return (head.to_owned(), BTreeMap::new(), value);
    };
    let labels = labels.strip_suffix('}').expect("labels end with }");
    let mut map = BTreeMap::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.expect("a label value ends with a quote");
        assert!(
            map.insert(key.to_owned(), after[..end].to_owned())
                .is_none(),
            "label {key} twice in {line:?}"
        );
        rest = after[end + 1..].trim_start_matches(',');
    }
    assert!(valid_name(name), "sample name {name:?}");
    (name.to_owned(), map, value)
}
