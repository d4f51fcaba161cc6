//! Start-up wiring: the pieces a collector is assembled from, built from its
//! configuration (the actuator with its ticket store and resolved ladders, the API
//! token). Only the crate root uses it, at start and on every reload, so that no
//! component has to know the whole configuration.

use std::sync::Arc;

use crate::actuator::oktawave::GroupLadder;
use crate::actuator::{Actuator, ActuatorConfig, ActuatorError, LogActuator, Oktawave};
use crate::config::Config;
use crate::store::Store;

/// Builds the configured actuator (the log actuator without one). For Oktawave this
/// asks the API for its instance types and resolves every group's ladder in `config`
/// to them (refusing to start on an unknown type), and opens the ticket store in the
/// state directory.
pub async fn start_actuator(config: &mut Config) -> Result<Arc<dyn Actuator>, ActuatorError> {
    Ok(match &config.actuator {
        None => Arc::new(LogActuator),
        Some(ActuatorConfig::Oktawave(c)) => {
            let store = Store::open(&config.state.dir)
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
