//! nginx `stub_status`: connections and the total request counter, parsed, and the
//! [`Reader`] that turns two readings into rates and gauges.
//!
//! ```text
//! Active connections: 2
//! server accepts handled requests
//!  16 16 31
//! Reading: 0 Writing: 1 Waiting: 1
//! ```

use std::time::Instant;

use serde::Serialize;

use super::http::StatusPage;
use super::rate::{Counter, Reset, own_scrape};
use super::{SourceError, SourceSample};

/// One reading of `stub_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StubStatus {
    /// Open client connections, waiting ones included.
    pub active: u64,
    /// Connections accepted since the server started (counter).
    pub accepts: u64,
    /// Connections handled (counter).
    pub handled: u64,
    /// Client requests (counter; nginx keeps it across `nginx -s reload`).
    pub requests: u64,
    /// Connections where nginx reads the request header.
    pub reading: u64,
    /// Connections where nginx writes the response.
    pub writing: u64,
    /// Idle keep-alive connections.
    pub waiting: u64,
}

/// Parses a `stub_status` page.
pub fn parse(text: &str) -> Result<StubStatus, String> {
    let mut status = StubStatus::default();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let number = |s: Option<&str>, what: &str| -> Result<u64, String> {
        s.ok_or_else(|| format!("no {what}"))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    let active = lines
        .next()
        .and_then(|l| l.strip_prefix("Active connections:"))
        .ok_or("not a stub_status page: no `Active connections:`")?;
    status.active = number(Some(active.trim()), "active connections")?;
    if lines.next() != Some("server accepts handled requests") {
        return Err("not a stub_status page: no `server accepts handled requests`".into());
    }
    let mut counters = lines.next().ok_or("no counters line")?.split_whitespace();
    status.accepts = number(counters.next(), "accepts")?;
    status.handled = number(counters.next(), "handled")?;
    status.requests = number(counters.next(), "requests")?;
    let mut words = lines
        .next()
        .ok_or("no Reading/Writing/Waiting line")?
        .split_whitespace();
    while let Some(word) = words.next() {
        let value = number(words.next(), word)?;
        match word {
            "Reading:" => status.reading = value,
            "Writing:" => status.writing = value,
            "Waiting:" => status.waiting = value,
            _ => {}
        }
    }
    Ok(status)
}

/// nginx gauges, and its connection counters as rates over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NginxGauges {
    /// Open client connections.
    pub active: u64,
    /// Reading request headers.
    pub reading: u64,
    /// Writing responses.
    pub writing: u64,
    /// Idle keep-alive connections.
    pub waiting: u64,
    /// Accepted connections per second over the interval.
    pub accepted_per_second: Option<f64>,
    /// Handled connections per second over the interval.
    pub handled_per_second: Option<f64>,
}

/// Reads an nginx `stub_status` page, with its counters' previous readings.
#[derive(Debug)]
pub struct Reader {
    page: StatusPage,
    requests: Counter,
    accepts: Counter,
    handled: Counter,
}

impl Reader {
    /// A reader of `page`; its first reading gives gauges but no rates.
    pub fn new(page: StatusPage) -> Self {
        Self {
            page,
            requests: Counter::default(),
            accepts: Counter::default(),
            handled: Counter::default(),
        }
    }

    /// Reads the page into `sample`: the request rate and the nginx gauges.
    pub async fn read(&mut self, sample: &mut SourceSample) -> Result<(), SourceError> {
        let now = Instant::now();
        let body = self.page.get().await?;
        let status = parse(&String::from_utf8_lossy(&body)).map_err(SourceError::Parse)?;
        // nginx keeps its counters across a reload; they restart from zero only with the
        // server.
        sample.set_delta(own_scrape(self.requests.update(
            status.requests,
            now,
            Reset::FromZero,
        )));
        sample.nginx = Some(NginxGauges {
            active: status.active,
            reading: status.reading,
            writing: status.writing,
            waiting: status.waiting,
            accepted_per_second: self
                .accepts
                .update(status.accepts, now, Reset::FromZero)
                .and_then(|d| d.per_second()),
            handled_per_second: self
                .handled
                .update(status.handled, now, Reset::FromZero)
                .and_then(|d| d.per_second()),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nginx_output() {
        let text = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630948 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n";
        assert_eq!(
            parse(text).unwrap(),
            StubStatus {
                active: 291,
                accepts: 16_630_948,
                handled: 16_630_948,
                requests: 31_070_465,
                reading: 6,
                writing: 179,
                waiting: 106,
            }
        );
    }

    #[test]
    fn refuses_other_pages() {
        assert!(parse("<html>404</html>").is_err());
        assert!(parse("Active connections: 1\nserver accepts handled requests\n 1 x 3\n").is_err());
        assert!(parse("").is_err());
    }
}
