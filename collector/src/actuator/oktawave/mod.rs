//! The Oktawave actuator: resizes an Oktawave instance (an "OCI") by changing its
//! instance *type* through Oktawave's public REST API (v1), then follows the operation's
//! ticket until it ends. Every request follows Oktawave's published Go SDK
//! (`oktawave-code/odk`) and Terraform provider (`oktawave-code/terraform-provider-oktawave`);
//! `docs/oktawave.md` names the file each one comes from.
//!
//! ```text
//!  POST {id_url}/core/connect/token          OAuth2 password grant (cached; 401 → refresh)
//!  GET  {api}/instances/types?pageSize&pageNumber   at start, every page: rung → Id, Cpu, Ram
//!  GET  {api}/instances/{id}                 IsLocked → look for our ticket; already the size → done
//!  POST {api}/instances/{id}/change_type_ticket?typeId=N   no body → ticket (persisted)
//!  GET  {api}/tickets/{ticket}               every poll_interval until EndDate is set:
//!                                            136 succeeded, 137 error (134 new, 135 running)
//!  GET  {api}/tickets?creationDateFrom=...   a locked instance after a lost answer: the
//!                                            running ticket on it, created after the decision
//! ```
//!
//! A succeeded ticket only means Oktawave changed the type: the engine still waits for the
//! agent to report the new size before it calls the resize verified. The ticket id is
//! recorded in the store before polling starts, so a collector restarted mid-operation
//! resumes polling the same ticket (the engine sends the unanswered decision again with
//! the same id) and never starts a second change. If the collector died after Oktawave
//! created the ticket but before the answer arrived, the instance is found locked: the
//! running ticket on it created since the decision is followed instead (`ticket.rs`).
//! The change request itself is never retried: a lost answer may hide a ticket already
//! running, and a second one would resize twice; polling tolerates up to
//! `max_transient_errors` failures in a row.
//!
//! Files: `client` (token and REST calls, paged lists), `model` (the SDK's JSON shapes),
//! `types` (ladder rungs → instance types), `ticket` (change, lost answers, polling).

mod client;
mod model;
mod ticket;
mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

pub use client::{CallError, Client, Endpoint, MAX_LIST_ITEMS, PAGE_SIZE};
pub use model::{
    DictionaryItem, Instance, InstanceType, Page, PageMeta, TICKET_ERROR, TICKET_NEW,
    TICKET_RUNNING, TICKET_SUCCEEDED, Ticket,
};
pub use types::{GroupLadder, ResolveError, RungTypes, find_type};

use super::{Actuator, ActuatorError, AttemptLog, BoxFuture, ResizeRequest, Verdict};
use crate::store::Store;

/// Oktawave's public identity server.
pub const DEFAULT_ID_URL: &str = "https://id.oktawave.com";
/// Oktawave's API base path (odk's `docs/OCIApi.md`: "All URIs are relative to
/// `https://api.oktawave.com/services`"; `/beta` was the 2019–2020 one).
pub const DEFAULT_API_URL: &str = "https://api.oktawave.com/services";
/// The shortest `poll_interval` accepted.
const MIN_POLL: Duration = Duration::from_millis(10);

/// An Oktawave data centre with an API of its own (the Terraform provider's `dc`, whose
/// `dcConfigs` in `oktawave/config.go` name them `DC1` and `DC2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataCenter {
    /// PL-1 (Warsaw): `https://pl1-api.oktawave.com/services`.
    #[serde(rename = "pl1", alias = "DC1")]
    Pl1,
    /// PL-2 (Kraków): `https://pl2-api.oktawave.com/services`.
    #[serde(rename = "pl2", alias = "DC2")]
    Pl2,
}

impl DataCenter {
    /// The data centre's API base path.
    pub fn api_url(self) -> &'static str {
        match self {
            DataCenter::Pl1 => "https://pl1-api.oktawave.com/services",
            DataCenter::Pl2 => "https://pl2-api.oktawave.com/services",
        }
    }
}

/// `[actuator]` with `kind = "oktawave"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OktawaveConfig {
    /// The identity server (token endpoint at `{id_url}/core/connect/token`).
    #[serde(default = "default_id_url")]
    pub id_url: String,
    /// The data centre whose API to call (`pl1` or `pl2`); unset: the general API
    /// (`https://api.oktawave.com/services`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_center: Option<DataCenter>,
    /// The API base path, overriding `data_center` (a proxy, a test double).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The API client's id (created at id.oktawave.com, scope `oktawave.api`).
    pub client_id: String,
    /// File holding the API client's secret.
    pub client_secret_file: PathBuf,
    /// The Oktawave account's user name (e-mail).
    pub username: String,
    /// File holding the account's password.
    pub password_file: PathBuf,
    /// Each Rally VM's Oktawave instance id (`web-1 = 123456`).
    #[serde(default)]
    pub instances: BTreeMap<String, u64>,
    /// How often a running ticket is polled ("10s").
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time-out of one API call ("30s").
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed polls in a row tolerated before giving up on a ticket.
    #[serde(default = "default_max_transient_errors")]
    pub max_transient_errors: u32,
}

fn default_id_url() -> String {
    DEFAULT_ID_URL.into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_transient_errors() -> u32 {
    5
}

impl OktawaveConfig {
    /// The API base path in force: `api_url`, else the data centre's, else the default.
    pub fn api_base(&self) -> &str {
        match (&self.api_url, self.data_center) {
            (Some(url), _) => url,
            (None, Some(dc)) => dc.api_url(),
            (None, None) => DEFAULT_API_URL,
        }
    }
}

/// The Oktawave actuator. Built by [`Oktawave::new`], then [`Oktawave::resolve`]d against
/// the API and given the ticket store with [`Oktawave::with_store`] by the start-up wiring.
pub struct Oktawave {
    config: OktawaveConfig,
    client: Client,
    /// (group, rung name) → type id.
    rung_types: RungTypes,
    tickets: Option<Arc<Mutex<Store>>>,
}

impl std::fmt::Debug for Oktawave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oktawave")
            .field("client", &self.client)
            .field("instances", &self.config.instances.len())
            .field("rung_types", &self.rung_types.len())
            .finish_non_exhaustive()
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ActuatorError> {
    let err = |reason: String| ActuatorError::Oktawave(format!("actuator.{key} {url:?}: {reason}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| err(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http and https are supported".into()));
    }
    Ok(())
}

impl Oktawave {
    /// Reads the secret files and checks the URLs and bounds (no network).
    pub fn new(config: OktawaveConfig) -> Result<Self, ActuatorError> {
        let client_secret =
            rally_daemon::secret::read("actuator.client_secret_file", &config.client_secret_file)?;
        let password = rally_daemon::secret::read("actuator.password_file", &config.password_file)?;
        check_url("id_url", &config.id_url)?;
        check_url("api_url", config.api_base())?;
        if config.poll_interval < MIN_POLL {
            return Err(ActuatorError::Oktawave(format!(
                "actuator.poll_interval must be at least {MIN_POLL:?}"
            )));
        }
        if config.timeout.is_zero() {
            return Err(ActuatorError::Oktawave(
                "actuator.timeout must be more than 0s".into(),
            ));
        }
        let client = Client::new(Endpoint {
            id_url: config.id_url.clone(),
            api_url: config.api_base().to_owned(),
            client_id: config.client_id.clone(),
            client_secret,
            username: config.username.clone(),
            password,
            timeout: config.timeout,
        })
        .map_err(ActuatorError::Client)?;
        Ok(Self {
            config,
            client,
            rung_types: RungTypes::new(),
            tickets: None,
        })
    }

    /// Records tickets in `store` (a connection of its own to the collector's database).
    pub fn with_store(mut self, store: Store) -> Self {
        self.tickets = Some(Arc::new(Mutex::new(store)));
        self
    }

    /// The API client (for reading what the actuator reads).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Fetches every page of the instance types and resolves `groups`' ladders to them
    /// (`types.rs`): rungs naming a type get its size, and every member must
    /// have an instance id. The caller compiles its policies again with the new sizes.
    pub async fn resolve(&mut self, groups: &mut [GroupLadder<'_>]) -> Result<(), ActuatorError> {
        let types = self
            .client
            .instance_types()
            .await
            .map_err(|e| ActuatorError::Oktawave(format!("listing instance types: {e}")))?;
        self.resolve_with(&types, groups)
    }

    /// [`resolve`](Self::resolve) against a type list already fetched.
    pub fn resolve_with(
        &mut self,
        types: &[InstanceType],
        groups: &mut [GroupLadder<'_>],
    ) -> Result<(), ActuatorError> {
        self.rung_types = types::resolve(types, &self.config.instances, groups)
            .map_err(|e| ActuatorError::Oktawave(e.to_string()))?;
        Ok(())
    }

    /// Runs `f` on the ticket store off the async threads; `None` without a store or
    /// when it fails (logged).
    async fn with_tickets<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = Arc::clone(self.tickets.as_ref()?);
        let result = tokio::task::spawn_blocking(move || {
            f(&mut store.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await;
        match result {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                warn!(error = %e, "Oktawave ticket store failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "Oktawave ticket store task failed");
                None
            }
        }
    }
}

impl Actuator for Oktawave {
    fn kind(&self) -> &'static str {
        "oktawave"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        log: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            // The ticket's own record survives a restart (the state store); its API calls
            // are reported when the ticket is done.
            let mut attempts = Vec::new();
            let verdict = self.drive(request, &mut attempts).await;
            for a in attempts {
                log.record(a.started_at, Duration::from_millis(a.duration_ms), a.result)
                    .await;
            }
            verdict
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn config(extra: &str) -> OktawaveConfig {
        toml::from_str(&format!(
            "client_id = \"c\"\nclient_secret_file = \"/s\"\nusername = \"u\"\npassword_file = \"/p\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_api_base_is_the_default_the_data_centre_or_api_url() {
        assert_eq!(config("").api_base(), "https://api.oktawave.com/services");
        assert_eq!(
            config("data_center = \"pl1\"").api_base(),
            "https://pl1-api.oktawave.com/services"
        );
        assert_eq!(
            config("data_center = \"DC2\"").api_base(),
            "https://pl2-api.oktawave.com/services"
        );
        assert_eq!(
            config("data_center = \"pl2\"\napi_url = \"http://127.0.0.1:9/api\"").api_base(),
            "http://127.0.0.1:9/api"
        );
        assert!(
            toml::from_str::<OktawaveConfig>(
                "client_id = \"c\"\nclient_secret_file = \"/s\"\nusername = \"u\"\npassword_file = \"/p\"\ndata_center = \"pl3\""
            )
            .is_err()
        );
    }

    #[test]
    fn a_password_problem_names_the_password_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("client_secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let mut c = config("");
        c.client_secret_file = secret;
        c.password_file = dir.path().join("missing");
        let err = Oktawave::new(c).unwrap_err().to_string();
        assert!(err.contains("actuator.password_file"), "{err}");
        assert!(!err.contains("webhook"), "{err}");
    }
}
