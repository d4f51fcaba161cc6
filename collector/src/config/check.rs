//! What serde cannot check in `collector.toml`: ranges, rules across keys, and secret
//! files that must be readable now. Each check returns the key path it rejects, which
//! [`rally_daemon::config_file`] locates in the file.

use std::collections::{HashMap, HashSet};

use rally_daemon::config_file::Invalid;
use rally_daemon::secret::{self, SecretError};
use rally_policy::ladder::LadderError;
use rally_policy::{GroupPolicy, PolicyError};

use super::{AuthMode, Config};
use crate::actuator::{ActuatorConfig, ActuatorError};
use crate::vm_id::{UNGROUPED, validate_id};

impl Config {
    /// Checks what serde cannot, section by section.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        self.check_listen()?;
        self.check_ingest()?;
        if self.state.dir.as_os_str().is_empty() {
            return Err(Invalid::new("state.dir", "must not be empty"));
        }
        self.check_groups()?;
        self.check_actuator()?;
        if let Some(file) = &self.api.token_file {
            secret::read("api.token_file", file).map_err(|e| located_secret(&e))?;
        }
        self.check_engine()?;
        self.check_tls()?;
        self.check_ha()?;
        self.check_auth()
    }

    /// Endpoints that are URLs, a TTL etcd accepts, a deadline shorter than the TTL
    /// (so a leader notices its lost lease before another collector takes over).
    fn check_ha(&self) -> Result<(), Invalid> {
        let Some(ha) = &self.ha else { return Ok(()) };
        if ha.etcd.is_empty() {
            return Err(Invalid::new(
                "ha.etcd",
                "list at least one etcd member's URL",
            ));
        }
        for (i, url) in ha.etcd.iter().enumerate() {
            let https = url.starts_with("https://");
            if !(url.starts_with("http://") || https) {
                return Err(Invalid::new(
                    format!("ha.etcd[{i}]"),
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            if https != ha.etcd_ca_file.is_some() {
                return Err(Invalid::new(
                    format!("ha.etcd[{i}]"),
                    if https {
                        format!(
                            "{url:?} is https://: set ha.etcd_ca_file to the CA of the members' certificates"
                        )
                    } else {
                        format!(
                            "{url:?} is http:// while ha.etcd_ca_file is set: use https:// for every member"
                        )
                    },
                ));
            }
        }
        ha.tls()
            .map_err(|e| Invalid::new(e.key, e.problem.clone()))?;
        if ha.lease_ttl < std::time::Duration::from_secs(2) || ha.lease_ttl.subsec_nanos() != 0 {
            return Err(Invalid::new(
                "ha.lease_ttl",
                "must be whole seconds, at least 2s (etcd's lease granularity)",
            ));
        }
        if ha.etcd_timeout.is_zero() || ha.etcd_timeout * 2 > ha.lease_ttl {
            return Err(Invalid::new(
                "ha.etcd_timeout",
                "must be more than 0s and at most half of ha.lease_ttl",
            ));
        }
        if !ha.prefix.starts_with('/') || ha.prefix.ends_with('/') {
            return Err(Invalid::new(
                "ha.prefix",
                "must start with / and not end with one (e.g. /rally)",
            ));
        }
        if ha.name.as_deref().is_some_and(str::is_empty) {
            return Err(Invalid::new("ha.name", "must not be empty"));
        }
        Ok(())
    }

    /// The certificate, its key and the client CA: readable, matching, not expired.
    fn check_tls(&self) -> Result<(), Invalid> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        crate::tls::ServerTls::load(tls.files())
            .map(drop)
            .map_err(|e| Invalid::new(&e.key, format!("{}: {}", e.path.display(), e.problem)))
    }

    fn check_listen(&self) -> Result<(), Invalid> {
        // Port 0 ("any free port", for tests) cannot collide.
        if self.listen.grpc == self.listen.http && self.listen.grpc.port() != 0 {
            return Err(Invalid::new(
                "listen.http",
                format!("same address as listen.grpc ({})", self.listen.grpc),
            ));
        }
        if !(1..=1_048_576).contains(&self.listen.max_connections) {
            return Err(Invalid::new(
                "listen.max_connections",
                format!(
                    "{} is out of range 1..=1048576",
                    self.listen.max_connections
                ),
            ));
        }
        if self.listen.handshake_timeout.is_zero() {
            return Err(Invalid::new(
                "listen.handshake_timeout",
                "must be more than 0s",
            ));
        }
        if self.listen.idle_timeout.is_zero() {
            return Err(Invalid::new("listen.idle_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    fn check_ingest(&self) -> Result<(), Invalid> {
        let ingest = &self.ingest;
        if ingest.stale_after.is_zero() {
            return Err(Invalid::new("ingest.stale_after", "must be more than 0s"));
        }
        if ingest.forget_after < ingest.stale_after {
            return Err(Invalid::new(
                "ingest.forget_after",
                "must be at least ingest.stale_after",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&ingest.max_message_bytes) {
            return Err(Invalid::new(
                "ingest.max_message_bytes",
                format!(
                    "{} is out of range 1024..=67108864",
                    ingest.max_message_bytes
                ),
            ));
        }
        if ingest.max_streams == 0 {
            return Err(Invalid::new("ingest.max_streams", "must be at least 1"));
        }
        if ingest.max_streams_per_vm == 0 {
            return Err(Invalid::new(
                "ingest.max_streams_per_vm",
                "must be at least 1",
            ));
        }
        if ingest.max_vms == 0 {
            return Err(Invalid::new("ingest.max_vms", "must be at least 1"));
        }
        if ingest.hello_timeout.is_zero() {
            return Err(Invalid::new("ingest.hello_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    /// Names and members of every group, then each resized group's policy.
    fn check_groups(&self) -> Result<(), Invalid> {
        let mut seen_groups = HashSet::new();
        let mut seen_vms = HashMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            let name_key = format!("groups[{i}].name");
            validate_id(&group.name).map_err(|why| Invalid::new(&name_key, why))?;
            if group.name == UNGROUPED {
                return Err(Invalid::new(
                    name_key,
                    format!("`{UNGROUPED}` is reserved for VMs that no group names"),
                ));
            }
            if !seen_groups.insert(group.name.as_str()) {
                return Err(Invalid::new(
                    name_key,
                    format!("group `{}` is defined twice", group.name),
                ));
            }
            for (j, vm) in group.vms.iter().enumerate() {
                let key = format!("groups[{i}].vms[{j}]");
                validate_id(vm).map_err(|why| Invalid::new(&key, why))?;
                if let Some(other) = seen_vms.insert(vm.as_str(), group.name.as_str()) {
                    return Err(Invalid::new(
                        key,
                        format!("VM `{vm}` is already in group `{other}`"),
                    ));
                }
            }
            if group.resizes() {
                self.check_policy(i, group)?;
            }
        }
        Ok(())
    }

    /// The policy of `group`, the `i`-th, which has a ladder.
    fn check_policy(&self, i: usize, group: &GroupPolicy) -> Result<(), Invalid> {
        let mut policy = group.clone();
        if group.ladder.iter().any(|r| r.oktawave_type.is_some()) {
            if !matches!(self.actuator, Some(ActuatorConfig::Oktawave(_))) {
                return Err(Invalid::new(
                    format!("groups[{i}].ladder"),
                    "a rung names an oktawave_type but [actuator] is not kind = \"oktawave\"",
                ));
            }
            // Sizes of Oktawave types are read from the API at start (and the ladder is
            // checked again then); until then, stand-in sizes that grow let names,
            // min/max and boosts be checked here.
            let mut prev = (0u32, 0u64);
            for rung in &mut policy.ladder {
                if rung.oktawave_type.is_some() && rung.vcpus == 0 && rung.memory_bytes == 0 {
                    // Saturating: a rung before may be as large as its type allows.
                    (rung.vcpus, rung.memory_bytes) =
                        (prev.0.saturating_add(1), prev.1.saturating_add(1 << 30));
                }
                prev = (rung.vcpus, rung.memory_bytes);
            }
        }
        if let Err(e) = policy.compile() {
            let key = policy_error_key(group, &e);
            return Err(Invalid::new(format!("groups[{i}].{key}"), e.to_string()));
        }
        if !group.effective_dry_run(self.dry_run) && self.actuator.is_none() {
            let key = if group.dry_run.is_some() {
                format!("groups[{i}].dry_run")
            } else {
                "dry_run".to_owned()
            };
            return Err(Invalid::new(
                key,
                format!(
                    "group `{}` is not dry-run but no [actuator] is configured",
                    group.name
                ),
            ));
        }
        Ok(())
    }

    /// What the actuator can check without the network, at the key it is about.
    fn check_actuator(&self) -> Result<(), Invalid> {
        let Some(actuator) = &self.actuator else {
            return Ok(());
        };
        let Err(e) = actuator.check() else {
            return Ok(());
        };
        use ActuatorError as E;
        let key = match (&e, actuator) {
            (E::SecretFile(e), _) => return Err(located_secret(e)),
            (E::Url { url, .. }, ActuatorConfig::Oktawave(c)) => {
                if *url == c.id_url {
                    "actuator.id_url".to_owned()
                } else {
                    "actuator.api_url".to_owned()
                }
            }
            (E::Url { .. }, _) => "actuator.url".to_owned(),
            (E::Invalid { key, .. }, _) => format!("actuator.{key}"),
            _ => "actuator".to_owned(),
        };
        Err(Invalid::new(key, e.to_string()))
    }

    fn check_engine(&self) -> Result<(), Invalid> {
        if self.engine.tick.is_zero() {
            return Err(Invalid::new("engine.tick", "must be more than 0s"));
        }
        if self.engine.queue == 0 {
            return Err(Invalid::new("engine.queue", "must be at least 1"));
        }
        if self.engine.concurrency == 0 {
            return Err(Invalid::new("engine.concurrency", "must be at least 1"));
        }
        Ok(())
    }

    /// The mode against the tokens, then every token: its VM, and a readable file that
    /// no other VM shares.
    fn check_auth(&self) -> Result<(), Invalid> {
        match self.auth.mode {
            AuthMode::None if !self.auth.tokens.is_empty() => {
                return Err(Invalid::new(
                    "auth.mode",
                    "[[auth.tokens]] are given but mode is \"none\": set mode = \"token\" or remove them",
                ));
            }
            AuthMode::Token if self.auth.tokens.is_empty() => {
                return Err(Invalid::new(
                    "auth.mode",
                    "mode is \"token\" but no [[auth.tokens]] are given",
                ));
            }
            AuthMode::Certificate if !self.auth.tokens.is_empty() => {
                return Err(Invalid::new(
                    "auth.mode",
                    "[[auth.tokens]] are given but mode is \"certificate\": remove them or set mode = \"token\"",
                ));
            }
            AuthMode::Certificate
                if self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) =>
            {
                return Err(Invalid::new(
                    "auth.mode",
                    "mode is \"certificate\" but agents are not asked for certificates: set [tls] client_ca_file (with cert_file and key_file)",
                ));
            }
            _ => {}
        }
        let mut token_vms = HashSet::new();
        let mut secrets = HashMap::new();
        for (i, token) in self.auth.tokens.iter().enumerate() {
            let vm_key = format!("auth.tokens[{i}].vm");
            validate_id(&token.vm).map_err(|why| Invalid::new(&vm_key, why))?;
            if !token_vms.insert(token.vm.as_str()) {
                return Err(Invalid::new(
                    vm_key,
                    format!("VM `{}` has two tokens", token.vm),
                ));
            }
            let file_key = format!("auth.tokens[{i}].file");
            let secret = secret::read(&file_key, &token.file).map_err(|e| located_secret(&e))?;
            if let Some(other) = secrets.insert(secret.expose().to_owned(), token.vm.as_str()) {
                return Err(Invalid::new(
                    file_key,
                    format!("holds the same token as VM `{other}`'s"),
                ));
            }
        }
        Ok(())
    }
}

/// A secret file error at its key; the message names the file and what is wrong.
fn located_secret(e: &SecretError) -> Invalid {
    Invalid::new(&e.key, format!("{}: {}", e.path.display(), e.problem))
}

/// The config key (below `groups[i].`) a policy error is about.
fn policy_error_key(group: &GroupPolicy, err: &PolicyError) -> String {
    match err {
        PolicyError::Ladder(LadderError::UnknownRung(name)) => {
            if group.min_rung.as_deref() == Some(name.as_str()) {
                "min_rung".into()
            } else {
                "max_rung".into()
            }
        }
        PolicyError::Ladder(LadderError::MinAboveMax { .. }) => "min_rung".into(),
        PolicyError::Ladder(_) => "ladder".into(),
        PolicyError::Rule { index, .. } => format!("rules[{index}]"),
        PolicyError::Target { index, .. } => format!("targets[{index}]"),
        PolicyError::Boost { index, .. } => format!("boosts[{index}]"),
        PolicyError::Value { key, .. } => (*key).to_owned(),
        PolicyError::OutOfRange { key, .. } => key.clone(),
    }
}
