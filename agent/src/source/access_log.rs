//! Access-log lines: a log format (nginx `$variables` or Apache `%` directives) compiled
//! into a matcher that picks out the status and the request time, and the per-interval
//! tally (requests by status class, a latency histogram).
//!
//! The matcher walks the line once, jumping from one literal of the format to the next
//! with a substring search, and stops after the last field it needs, so a line costs a
//! few hundred nanoseconds.

use std::path::PathBuf;
use std::time::Instant;

use super::rate::Delta;
use super::tail::Tailer;
use super::{SourceError, SourceSample, StatusClasses};

/// The format nginx calls `combined` (Apache's `combined` writes the same shape).
pub const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;

/// A field the tally reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// The response status (`$status`, `%>s`, `%s`).
    Status,
    /// The request time in seconds (`$request_time`, `%T`; fractions allowed).
    Seconds,
    /// The request time in milliseconds (`%{ms}T`).
    Millis,
    /// The request time in microseconds (`%D`, `%{us}T`).
    Micros,
    /// Any other field: skipped.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(Field),
}

/// A compiled log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    pieces: Vec<Piece>,
    /// Index of the last piece the tally needs.
    last_needed: usize,
    /// Whether the format has a request time.
    pub has_request_time: bool,
}

impl LogFormat {
    /// Compiles a format: `combined`, or a format string with nginx variables
    /// (`$status`, `$request_time`) or Apache directives (`%>s`, `%D`, `%T`).
    pub fn compile(format: &str) -> Result<Self, String> {
        let format = if format == "combined" {
            COMBINED
        } else {
            format
        };
        let mut pieces: Vec<Piece> = Vec::new();
        let mut literal = String::new();
        let mut rest = format;
        while let Some(c) = rest.chars().next() {
            let field = if let Some(after) = rest.strip_prefix('$') {
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if len == 0 {
                    None
                } else {
                    let name = &after[..len];
                    rest = &after[len..];
                    Some(match name {
                        "status" => Field::Status,
                        "request_time" => Field::Seconds,
                        _ => Field::Other,
                    })
                }
            } else if let Some(after) = rest.strip_prefix('%') {
                if let Some(after) = after.strip_prefix('%') {
                    literal.push('%');
                    rest = after;
                    continue;
                }
                let (modifier, after) = match after.strip_prefix('{') {
                    Some(inner) => {
                        let (m, a) = inner
                            .split_once('}')
                            .ok_or_else(|| format!("unterminated `%{{` in `{format}`"))?;
                        (Some(m), a)
                    }
                    None => (None, after),
                };
                let after = after.trim_start_matches(['<', '>']);
                let directive = after
                    .chars()
                    .next()
                    .ok_or_else(|| format!("`%` at the end of `{format}`"))?;
                rest = &after[directive.len_utf8()..];
                Some(match (directive, modifier) {
                    ('s', _) => Field::Status,
                    ('D', _) | ('T', Some("us")) => Field::Micros,
                    ('T', Some("ms")) => Field::Millis,
                    ('T', None | Some("s")) => Field::Seconds,
                    _ => Field::Other,
                })
            } else {
                None
            };
            match field {
                Some(field) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    } else if matches!(pieces.last(), Some(Piece::Field(_))) {
                        return Err(format!(
                            "two fields without text between them in `{format}`: cannot tell where one ends"
                        ));
                    }
                    pieces.push(Piece::Field(field));
                }
                None => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let needed = |p: &Piece| matches!(p, Piece::Field(f) if *f != Field::Other);
        let last_needed = pieces
            .iter()
            .rposition(needed)
            .ok_or_else(|| format!("no status field (`$status` or `%>s`) in `{format}`"))?;
        if !pieces.contains(&Piece::Field(Field::Status)) {
            return Err(format!(
                "no status field (`$status` or `%>s`) in `{format}`"
            ));
        }
        let has_request_time = pieces.iter().any(|p| {
            matches!(
                p,
                Piece::Field(Field::Seconds | Field::Millis | Field::Micros)
            )
        });
        Ok(Self {
            pieces,
            last_needed,
            has_request_time,
        })
    }

    /// The status and the request time (seconds) of one line, `None` if it does not
    /// match the format.
    pub fn parse(&self, line: &str) -> Option<(u16, Option<f64>)> {
        let mut rest = line;
        let mut status = None;
        let mut time = None;
        for (i, piece) in self.pieces.iter().enumerate().take(self.last_needed + 1) {
            match piece {
                Piece::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Piece::Field(field) => {
                    let end = match self.pieces.get(i + 1) {
                        Some(Piece::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    rest = &rest[end..];
                    match field {
                        Field::Status => status = Some(value.parse::<u16>().ok()?),
                        Field::Seconds => time = seconds(value, 1.0),
                        Field::Millis => time = seconds(value, 1e-3),
                        Field::Micros => time = seconds(value, 1e-6),
                        Field::Other => {}
                    }
                }
            }
        }
        Some((status?, time))
    }
}

/// A time field in `unit` seconds; `-` (nginx with no time) is none.
fn seconds(value: &str, unit: f64) -> Option<f64> {
    let v: f64 = value.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * unit)
}

/// Latency histogram buckets: upper bounds growing by 10 % from 100 µs to ~2 minutes.
const FIRST_BOUND: f64 = 1e-4;
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 148;

/// Requests of one interval: by status class and a latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// Complete lines (every one a request, parsed or not).
    pub lines: u64,
    /// Lines that did not match the format.
    pub unparsed: u64,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 5],
    histogram: Vec<u64>,
    timed: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            lines: 0,
            unparsed: 0,
            classes: [0; 5],
            histogram: vec![0; BUCKETS + 1],
            timed: 0,
        }
    }
}

/// Latency quantiles, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quantiles {
    /// Requests with a time.
    pub count: u64,
    /// Median.
    pub p50_seconds: f64,
    /// 95th percentile.
    pub p95_seconds: f64,
    /// 99th percentile.
    pub p99_seconds: f64,
}

impl Tally {
    /// Counts one line.
    pub fn add(&mut self, format: &LogFormat, line: &str) {
        self.lines += 1;
        let Some((status, time)) = format.parse(line) else {
            self.unparsed += 1;
            return;
        };
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.classes[usize::from(class)] += 1;
        }
        if let Some(t) = time {
            self.histogram[bucket(t)] += 1;
            self.timed += 1;
        }
    }

    /// The interval's latency quantiles (bucket upper bounds), if any request had a time.
    pub fn quantiles(&self) -> Option<Quantiles> {
        if self.timed == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = ((q * self.timed as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in self.histogram.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return upper_bound(i);
                }
            }
            upper_bound(BUCKETS)
        };
        Some(Quantiles {
            count: self.timed,
            p50_seconds: quantile(0.50),
            p95_seconds: quantile(0.95),
            p99_seconds: quantile(0.99),
        })
    }
}

fn bucket(seconds: f64) -> usize {
    if seconds <= FIRST_BOUND {
        return 0;
    }
    let i = ((seconds / FIRST_BOUND).ln() / GROWTH.ln()).ceil();
    // Float rounding may land one bucket low; the bound check fixes it.
    let mut i = (i as usize).min(BUCKETS);
    while i < BUCKETS && upper_bound(i) < seconds {
        i += 1;
    }
    i
}

fn upper_bound(i: usize) -> f64 {
    FIRST_BOUND * GROWTH.powi(i as i32)
}

/// Follows an access log and tallies the lines written since the previous reading.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    tailer: Box<Tailer>,
    format: LogFormat,
    previous: Option<Instant>,
}

impl Reader {
    /// A reader of the log at `path` in `format`, from its start or from its end.
    pub fn new(path: PathBuf, format: LogFormat, from_start: bool) -> Self {
        Self {
            tailer: Box::new(Tailer::new(&path, from_start)),
            path,
            format,
            previous: None,
        }
    }

    /// Reads the new lines into `sample`: requests, status classes and latency.
    pub async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let now = Instant::now();
        let mut tally = Tally::default();
        let format = &self.format;
        let poll = self
            .tailer
            .poll(now, &mut |line: &[u8]| {
                tally.add(format, std::str::from_utf8(line).unwrap_or(""));
            })
            .map_err(|source| SourceError::Log {
                path: self.path.clone(),
                source,
            })?;
        if !poll.open {
            return Err(SourceError::NoLog(self.path.clone()));
        }
        sample.statuses = Some(StatusClasses {
            informational: tally.classes[0],
            success: tally.classes[1],
            redirection: tally.classes[2],
            client_error: tally.classes[3],
            server_error: tally.classes[4],
        });
        sample.latency = tally.quantiles();
        sample.requests = tally.lines;
        if let Some(at) = self.previous.replace(now) {
            sample.set_delta(Some(Delta {
                count: tally.lines,
                interval: now.duration_since(at),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX_LINE: &str = r#"127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /shop/racket?id=7 HTTP/1.1" 200 2326 "http://example.com/" "Mozilla/5.0 (X11; Linux x86_64)""#;

    #[test]
    fn combined_reads_the_status() {
        let f = LogFormat::compile("combined").unwrap();
        assert!(!f.has_request_time);
        assert_eq!(f.parse(NGINX_LINE), Some((200, None)));
        let apache = r#"::1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 404 - "-" "curl/7.88""#;
        assert_eq!(f.parse(apache), Some((404, None)));
        assert_eq!(f.parse("garbage"), None);
        assert_eq!(
            f.parse(r#"1.2.3.4 - - [x] "GET / HTTP/1.1" abc 1 "-" "-""#),
            None
        );
    }

    #[test]
    fn custom_formats_read_the_request_time() {
        let nginx = LogFormat::compile(&format!("{COMBINED} $request_time")).unwrap();
        assert!(nginx.has_request_time);
        let line = format!("{NGINX_LINE} 0.250");
        assert_eq!(nginx.parse(&line), Some((200, Some(0.25))));

        let apache = LogFormat::compile(r#"%h %l %u %t "%r" %>s %b %D"#).unwrap();
        let line = r#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "POST /cart HTTP/1.1" 503 12 1500"#;
        let (status, time) = apache.parse(line).unwrap();
        assert_eq!(status, 503);
        assert!((time.unwrap() - 0.0015).abs() < 1e-12);

        let ms = LogFormat::compile("%>s %{ms}T").unwrap();
        assert_eq!(
            ms.parse("200 20")
                .map(|(s, t)| (s, t.map(|t| (t * 1e3).round()))),
            Some((200, Some(20.0)))
        );
    }

    #[test]
    fn formats_without_status_or_with_adjacent_fields_are_refused() {
        assert!(LogFormat::compile("$remote_addr $request_time").is_err());
        assert!(LogFormat::compile("$status$request_time").is_err());
        assert!(LogFormat::compile("%{foo").is_err());
    }

    #[test]
    fn tally_counts_classes_and_unparsed_lines() {
        let f = LogFormat::compile("$status $request_time").unwrap();
        let mut t = Tally::default();
        for line in [
            "200 0.1", "201 0.1", "301 0.1", "404 0.1", "500 0.1", "502 -", "junk",
        ] {
            t.add(&f, line);
        }
        assert_eq!(t.lines, 7);
        assert_eq!(t.unparsed, 1);
        assert_eq!(t.classes, [0, 2, 1, 1, 2]);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds_within_ten_percent() {
        let f = LogFormat::compile("$status $request_time").unwrap();
        let mut t = Tally::default();
        assert_eq!(t.quantiles(), None);
        // 1..=1000 ms.
        for ms in 1..=1000 {
            t.add(&f, &format!("200 {:.3}", f64::from(ms) / 1000.0));
        }
        let q = t.quantiles().unwrap();
        assert_eq!(q.count, 1000);
        for (got, want) in [
            (q.p50_seconds, 0.5),
            (q.p95_seconds, 0.95),
            (q.p99_seconds, 0.99),
        ] {
            assert!(got >= want && got <= want * 1.1 + 1e-9, "{got} vs {want}");
        }
        // Zero and huge times land in the end buckets.
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(1e9), BUCKETS);
        assert!(upper_bound(BUCKETS - 1) > 100.0);
    }
}
