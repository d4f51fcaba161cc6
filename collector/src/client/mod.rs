//! The HTTP API's client: what `rally-collector pause|resume|resize|decisions|groups|
//! status|vms` call. Answers are JSON; a 4xx/5xx carries `{"error": ..., "code": ...}`,
//! which is returned as [`ClientError::Api`] so the CLI can print the collector's own
//! words. An HTTPS API signed by a private CA (`rally-collector pki`) is trusted through
//! `--ca-file`.
//!
//! This file formats decisions and groups one line each; `fleet` formats the fleet
//! picture of `status` and the table of `vms`.

pub mod fleet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use rally_policy::SkipReason;
use serde_json::Value;

use crate::engine::outcome_text;
use crate::http::page::local_time;

/// Time-out of one API call.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token file could not be read.
    #[error(transparent)]
    Token(#[from] rally_daemon::secret::SecretError),
    /// The `--ca-file` could not be read.
    #[error("--ca-file {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--ca-file` holds no PEM certificate that can be used.
    #[error("--ca-file {}: no usable PEM certificate ({detail})", path.display())]
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// What the TLS library said.
        detail: String,
    },
    /// The collector could not be reached or answered garbage.
    #[error("calling {url}: {source}")]
    Http {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The collector refused the request.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The collector's `error` text.
        message: String,
    },
}

/// A client of one collector's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `base` (`http://127.0.0.1:9471`), with the bearer token
    /// from `token_file` if given. With `ca_file`, an `https://` API is trusted when its
    /// certificate chains to one of that file's certificates, and only then (the system's
    /// roots are not consulted: a private CA is the point).
    pub fn new(
        base: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let token = token_file
            .map(|path| rally_daemon::secret::read("--token-file", path))
            .transpose()?
            .map(|token| token.expose().to_owned());
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        if let Some(path) = ca_file {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in ca_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|source| ClientError::Http {
            url: base.to_owned(),
            source,
        })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let err = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(err)?;
        let status = resp.status();
        let text = resp.text().await.map_err(err)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// `POST /api/v1/groups/{group}/pause`.
    pub async fn pause(&self, group: &str) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/groups/{group}/pause"),
            &[],
            None,
        )
        .await
    }

    /// `POST /api/v1/groups/{group}/resume`.
    pub async fn resume(&self, group: &str) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/groups/{group}/resume"),
            &[],
            None,
        )
        .await
    }

    /// `POST /api/v1/vms/{vm}/resize` with `{"rung": rung}`.
    pub async fn resize(&self, vm: &str, rung: &str) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/vms/{vm}/resize"),
            &[],
            Some(serde_json::json!({ "rung": rung })),
        )
        .await
    }

    /// `GET /api/v1/decisions` with the given query pairs.
    pub async fn decisions(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, "/api/v1/decisions", query, None)
            .await
    }

    /// `GET /api/v1/groups`.
    pub async fn groups(&self) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, "/api/v1/groups", &[], None)
            .await
    }

    /// `GET /api/v1/vms`.
    pub async fn vms(&self) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, "/api/v1/vms", &[], None)
            .await
    }

    /// `GET /api/v1/leader`.
    pub async fn leader(&self) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, "/api/v1/leader", &[], None)
            .await
    }
}

/// The certificates of a PEM file (a CA, or a bundle of them).
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let refuse = |detail: String| ClientError::CaCertificate {
        path: path.to_owned(),
        detail,
    };
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refuse(e.to_string()))?;
    if certificates.is_empty() {
        return Err(refuse("the file has no CERTIFICATE block".to_owned()));
    }
    Ok(certificates)
}

/// A group's resize state in a few words.
fn group_state(g: &Value) -> &'static str {
    if g["resizes"] != true {
        "monitored only"
    } else if g["circuit_open"] == true {
        "CIRCUIT OPEN (resume to close)"
    } else if g["paused"] == true {
        "paused"
    } else {
        "active"
    }
}

/// The resize in flight (an `in_flight` field), or "none".
fn in_flight(f: &Value, tz: Tz) -> String {
    match f {
        Value::Null => "none".to_owned(),
        f => format!(
            "{} {} (until {})",
            f["vm"].as_str().unwrap_or("?"),
            f["direction"].as_str().unwrap_or("?"),
            when(&f["deadline"], tz)
        ),
    }
}

/// A group's newest decision (a `last_decision` field), or "none".
fn last_decision(d: &Value, tz: Tz) -> String {
    match d {
        Value::Null => "none".to_owned(),
        d => format!(
            "{} {} {}→{} at {}{}",
            d["vm"].as_str().unwrap_or("?"),
            d["direction"].as_str().unwrap_or("?"),
            d["from"].as_str().unwrap_or("?"),
            d["to"].as_str().unwrap_or("?"),
            when(&d["created_at"], tz),
            if d["dry_run"] == true {
                " (dry run: not sent)"
            } else {
                ""
            }
        ),
    }
}

/// Why a VM got no decision (a `skips` row), with times in `tz` and UTC.
fn skip_text(skip: &Value, tz: Tz) -> String {
    // `detail` is missing from older collectors' answers: their words, in UTC.
    serde_json::from_value::<SkipReason>(skip["detail"].clone())
        .map(|r| r.describe(&|t| local_time(t, tz)))
        .unwrap_or_else(|_| skip["reason"].as_str().unwrap_or("?").to_owned())
}

/// The time zone a row names (`timezone`), UTC if none.
fn zone(v: &Value) -> Tz {
    v.as_str().and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC)
}

/// An RFC 3339 time of the API in `tz` and UTC, or as given if it does not parse.
fn when(v: &Value, tz: Tz) -> String {
    match v.as_str().map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => local_time(t.to_utc(), tz),
        Some(Err(_)) => v.as_str().unwrap_or("?").to_owned(),
        None => "?".to_owned(),
    }
}

/// One line per decision, newest first, for people.
pub fn format_decisions(v: &Value) -> String {
    let mut out = String::new();
    for r in v["decisions"].as_array().into_iter().flatten() {
        let d = &r["decision"];
        let tz = zone(&r["timezone"]);
        // `outcome` is missing from older collectors' answers: derive it the same way.
        let outcome = r["outcome"]
            .as_str()
            .unwrap_or_else(|| crate::engine::outcome(d["dry_run"] == true, r["verdict"].as_str()));
        let request = if d["dry_run"] == true {
            outcome_text(outcome).to_owned()
        } else {
            format!("actuator: {outcome}")
        };
        out.push_str(&format!(
            "{}  {}  {}/{}  {} {}→{}  {}  {}  attempts={}  {}\n",
            when(&d["created_at"], tz),
            d["id"].as_str().unwrap_or("?"),
            d["group"].as_str().unwrap_or("?"),
            d["vm"].as_str().unwrap_or("?"),
            d["direction"].as_str().unwrap_or("?"),
            d["from"]["rung"].as_str().unwrap_or("?"),
            d["to"]["rung"].as_str().unwrap_or("?"),
            r["status"].as_str().unwrap_or("?"),
            request,
            r["attempts"].as_array().map_or(0, Vec::len),
            d["reason"].as_str().unwrap_or(""),
        ));
    }
    if out.is_empty() {
        out.push_str("no decisions\n");
    }
    out
}

/// One line per group, then one indented line per VM left alone at the last tick, for
/// people.
pub fn format_groups(v: &Value) -> String {
    let mut out = String::new();
    for g in v["groups"].as_array().into_iter().flatten() {
        let tz = zone(&g["timezone"]);
        let state = group_state(g);
        let in_flight = in_flight(&g["in_flight"], tz);
        let last = last_decision(&g["last_decision"], tz);
        out.push_str(&format!(
            "{}: {}{}; in flight: {}; last decision: {}\n",
            g["group"].as_str().unwrap_or("?"),
            state,
            if g["dry_run"] == true {
                ", dry-run"
            } else {
                ""
            },
            in_flight,
            last
        ));
        for skip in g["skips"].as_array().into_iter().flatten() {
            let reason = skip_text(skip, tz);
            match skip["vm"].as_str() {
                Some(vm) => out.push_str(&format!("  {vm}: {reason}\n")),
                None => out.push_str(&format!("  {reason}\n")),
            }
        }
    }
    if out.is_empty() {
        out.push_str("no groups\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::http::control::{DecisionList, DecisionRow, GroupList};
    use crate::http::page::tests::{dry_run_record, warming_group};

    #[test]
    fn a_dry_run_decision_reads_not_sent_in_both_zones() {
        let list = serde_json::to_value(DecisionList {
            decisions: vec![DecisionRow::new(dry_run_record(), &[warming_group()])],
        })
        .unwrap();
        let out = format_decisions(&list);
        assert!(
            out.starts_with("2026-12-04 19:02 CET (18:02 UTC)  d-1  web/web-1  up M→L"),
            "{out}"
        );
        assert!(out.contains("dry run: not sent"), "{out}");
        assert!(!out.contains("accepted"), "{out}");
    }

    #[test]
    fn decisions_without_outcome_or_zone_still_read_right() {
        let mut list = serde_json::to_value(DecisionList {
            decisions: vec![DecisionRow::new(dry_run_record(), &[])],
        })
        .unwrap();
        let row = list["decisions"][0].as_object_mut().unwrap();
        row.remove("outcome");
        row.remove("sent");
        let out = format_decisions(&list);
        assert!(out.starts_with("2026-12-04 18:02 UTC  d-1"), "{out}");
        assert!(out.contains("dry run: not sent"), "{out}");
    }

    #[test]
    fn a_group_shows_its_warm_up_and_last_decision_in_both_zones() {
        let groups = serde_json::to_value(GroupList {
            groups: vec![warming_group().into()],
        })
        .unwrap();
        let out = format_groups(&groups);
        assert!(
            out.starts_with(
                "web: active, dry-run; in flight: none; last decision: web-1 up M→L at \
                 2026-12-04 19:02 CET (18:02 UTC) (dry run: not sent)\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("\n  web-1: warming up until 2026-12-04 19:04 CET (18:04 UTC): "),
            "{out}"
        );
    }
}
