//! Start-up wiring: the pieces a collector is assembled from, built from its
//! configuration (the actuator with its ticket store and resolved ladders, the API
//! token). Only the crate root uses it, at start and on every reload, so that no
//! component has to know the whole configuration.

use std::sync::Arc;

use crate::actuator::oktawave::GroupLadder;
use crate::actuator::{Actuator, ActuatorConfig, ActuatorError, LogActuator, Oktawave};
use crate::config::Config;
use crate::ha::Ha;
use crate::store::{Store, StoreError};

/// Where the decision state lives: SQLite in `[state] dir`, or etcd under the leader's
/// term with `[ha]`. The engine and the Oktawave ticket store open it alike.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// The SQLite file in this directory.
    Sqlite(std::path::PathBuf),
    /// etcd, written under the term `term` holds.
    Etcd {
        /// The client.
        etcd: Box<rally_etcd::Etcd>,
        /// `ha.prefix`.
        prefix: String,
        /// The term this collector leads in (`None`: it does not).
        term: tokio::sync::watch::Receiver<Option<rally_etcd::Term>>,
    },
}

impl StateSource {
    /// The source `config` asks for (`elected`: the election state and its client).
    pub(crate) fn of(config: &Config, elected: Option<&(Arc<Ha>, rally_etcd::Etcd)>) -> Self {
        match elected {
            None => Self::Sqlite(config.state.dir.clone()),
            Some((ha, etcd)) => Self::Etcd {
                etcd: Box::new(etcd.clone()),
                prefix: ha.prefix(),
                term: ha.subscribe(),
            },
        }
    }

    /// Opens a store on the source. Must be called inside a tokio runtime (the etcd
    /// store runs its calls on it, from the blocking threads the engine uses).
    pub fn open(&self) -> Result<Store, StoreError> {
        match self {
            Self::Sqlite(dir) => Store::open(dir),
            Self::Etcd { etcd, prefix, term } => Ok(Store::etcd(
                etcd.as_ref().clone(),
                prefix,
                term.clone(),
                tokio::runtime::Handle::current(),
            )),
        }
    }
}

/// Builds the configured actuator (the log actuator without one). For Oktawave this
/// asks the API for its instance types and resolves every group's ladder in `config`
/// to them (refusing to start on an unknown type), and opens the ticket store in the
/// state directory.
pub async fn start_actuator(config: &mut Config) -> Result<Arc<dyn Actuator>, ActuatorError> {
    let source = StateSource::Sqlite(config.state.dir.clone());
    start_actuator_on(config, &source).await
}

/// [`start_actuator`] with the ticket store on the decision state's `source` (etcd with
/// `[ha]`, so that a new leader follows the old one's tickets).
pub async fn start_actuator_on(
    config: &mut Config,
    source: &StateSource,
) -> Result<Arc<dyn Actuator>, ActuatorError> {
    Ok(match &config.actuator {
        None => Arc::new(LogActuator),
        Some(ActuatorConfig::Oktawave(c)) => {
            let store = source
                .open()
                .map_err(|e| ActuatorError::Oktawave(format!("ticket store: {e}")))?;
            let mut oktawave = Oktawave::new(c.clone())?.with_store(store);
            let mut ladders: Vec<GroupLadder<'_>> = config
                .groups
                .iter_mut()
                .filter(|g| g.resizes())
                .map(|g| GroupLadder {
                    group: &g.name,
                    vms: &g.vms,
                    ladder: &mut g.ladder,
                })
                .collect();
            oktawave.resolve(&mut ladders).await?;
            // The policies are compiled again with Oktawave's sizes.
            for g in config.groups.iter().filter(|g| g.resizes()) {
                g.compile().map_err(|e| {
                    ActuatorError::Oktawave(format!(
                        "group `{}`: with Oktawave's sizes the policy is invalid: {e}",
                        g.name
                    ))
                })?;
            }
            Arc::new(oktawave)
        }
        Some(other) => Arc::from(other.build()?),
    })
}

/// The API bearer token of `[api] token_file`, if one is configured.
pub(crate) fn api_token(
    config: &Config,
) -> Result<Option<Arc<str>>, rally_daemon::secret::SecretError> {
    config
        .api
        .token_file
        .as_deref()
        .map(|path| rally_daemon::secret::read("api.token_file", path))
        .transpose()
        .map(|token| token.map(|t| Arc::from(t.expose())))
}
