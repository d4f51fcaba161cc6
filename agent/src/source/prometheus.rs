//! A counter from a Prometheus text endpoint: every series of one metric name whose
//! labels match the configured matchers, summed (e.g. a PHP app's
//! `http_requests_total{job="shop"}` across its `status` and `method` labels), and the
//! [`Reader`] that turns two sums into a rate.

use std::collections::BTreeMap;
use std::time::Instant;

use super::http::StatusPage;
use super::rate::{Counter, Reset};
use super::{SourceError, SourceSample};

/// Sums the samples of `metric` whose labels include every `(name, value)` of
/// `matchers`; `Ok(None)` when no series matches.
pub fn sum(
    text: &str,
    metric: &str,
    matchers: &BTreeMap<String, String>,
) -> Result<Option<f64>, String> {
    let mut total = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        // Cheap reject first: most lines are other metrics.
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, rest) = if let Some(inner) = rest.strip_prefix('{') {
            let (labels, rest) =
                split_labels(inner).map_err(|e| format!("line {}: {e}", number + 1))?;
            (labels, rest)
        } else if rest.starts_with([' ', '\t']) {
            (Vec::new(), rest)
        } else {
            // A longer name with this one as prefix (`http_requests_total_created`).
            continue;
        };
        let matched = matchers
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
        if !matched {
            continue;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("line {}: no value", number + 1))?;
        let value: f64 = value
            .parse()
            .map_err(|e| format!("line {}: value `{value}`: {e}", number + 1))?;
        if value.is_finite() && value >= 0.0 {
            *total.get_or_insert(0.0) += value;
        }
    }
    Ok(total)
}

/// A series' labels: (name, unescaped value).
type Labels<'a> = Vec<(&'a str, String)>;

/// Splits `a="x",b="y"} rest` into the labels and what follows the `}`.
fn split_labels(mut s: &str) -> Result<(Labels<'_>, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = s.split_once('=').ok_or("label without `=`")?;
        let rest = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        s = &rest[end + 1..];
    }
}

/// Reads one counter of a Prometheus text endpoint, with its previous reading.
#[derive(Debug)]
pub struct Reader {
    page: StatusPage,
    metric: String,
    matchers: BTreeMap<String, String>,
    counter: Counter,
}

impl Reader {
    /// A reader of `metric` on `page`, summed over the series `matchers` select.
    pub fn new(page: StatusPage, metric: String, matchers: BTreeMap<String, String>) -> Self {
        Self {
            page,
            metric,
            matchers,
            counter: Counter::default(),
        }
    }

    /// Reads the endpoint into `sample`: the counter's rate.
    pub async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let now = Instant::now();
        let body = self.page.get().await?;
        let metric = &self.metric;
        let total = sum(&String::from_utf8_lossy(&body), metric, &self.matchers)
            .map_err(SourceError::Parse)?
            .ok_or_else(|| SourceError::Parse(format!("no series of `{metric}` matches")))?;
        // Prometheus counters count from zero after a restart (its rate() rule).
        sample.set_delta(
            self.counter
                .update(total.round() as u64, now, Reset::FromZero),
        );
        Ok(())
    }
}

/// Whether `name` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{job="shop",status="200",path="/a\"b"} 1027
http_requests_total{job="shop",status="500"} 3
http_requests_total{job="admin",status="200"} 50 1700000000000
http_requests_total_created{job="shop"} 1.7e9
other_total 9
"#;

    fn matchers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sums_the_matching_series() {
        assert_eq!(
            sum(TEXT, "http_requests_total", &matchers(&[("job", "shop")])).unwrap(),
            Some(1030.0)
        );
        assert_eq!(
            sum(TEXT, "http_requests_total", &matchers(&[])).unwrap(),
            Some(1080.0)
        );
        assert_eq!(
            sum(
                TEXT,
                "http_requests_total",
                &matchers(&[("job", "shop"), ("status", "500")])
            )
            .unwrap(),
            Some(3.0)
        );
        assert_eq!(
            sum("up 1\nother_total 9\n", "other_total", &matchers(&[])).unwrap(),
            Some(9.0)
        );
    }

    #[test]
    fn no_match_is_none_and_garbage_is_an_error() {
        assert_eq!(
            sum(TEXT, "http_requests_total", &matchers(&[("job", "none")])).unwrap(),
            None
        );
        assert_eq!(sum(TEXT, "missing_total", &matchers(&[])).unwrap(), None);
        assert!(
            sum(
                "http_requests_total{job=\"x} 1\n",
                "http_requests_total",
                &matchers(&[])
            )
            .is_err()
        );
        assert!(
            sum(
                "http_requests_total abc\n",
                "http_requests_total",
                &matchers(&[])
            )
            .is_err()
        );
    }
}
