//! The counters and gauges the engine keeps for `/metrics`, and the groups' status,
//! shared between the engine task and the readers.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rally_policy::decision::Direction;

use super::lock;
use super::status::GroupStatus;

/// The labels of `rally_resize_requests_total`: group, vm, direction, outcome.
pub type RequestLabels = (String, String, &'static str, &'static str);

/// Counters and gauges the engine keeps for `/metrics`, and the groups' status.
#[derive(Debug, Default)]
pub struct EngineStats {
    groups: Mutex<BTreeMap<String, GroupStatus>>,
    /// (group, vm, direction, outcome) → requests.
    requests: Mutex<BTreeMap<RequestLabels, u64>>,
    /// (group, result) → verification results.
    verifications: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl EngineStats {
    /// Every group's status, by name.
    pub fn groups(&self) -> Vec<GroupStatus> {
        lock(&self.groups).values().cloned().collect()
    }

    /// One group's status.
    pub fn group(&self, name: &str) -> Option<GroupStatus> {
        lock(&self.groups).get(name).cloned()
    }

    /// `rally_resize_requests_total`: ((group, vm, direction, outcome), count).
    pub fn requests(&self) -> Vec<(RequestLabels, u64)> {
        lock(&self.requests)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// `rally_resize_verifications_total`: ((group, result), count).
    pub fn verifications(&self) -> Vec<((String, &'static str), u64)> {
        lock(&self.verifications)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(super) fn count_request(
        &self,
        group: &str,
        vm: &str,
        direction: Direction,
        outcome: &'static str,
    ) {
        *lock(&self.requests)
            .entry((group.to_owned(), vm.to_owned(), direction.as_str(), outcome))
            .or_default() += 1;
    }

    pub(super) fn count_verification(&self, group: &str, result: &'static str) {
        *lock(&self.verifications)
            .entry((group.to_owned(), result))
            .or_default() += 1;
    }

    pub(super) fn remove_group(&self, name: &str) {
        lock(&self.groups).remove(name);
    }

    pub(super) fn set_group(&self, status: GroupStatus) {
        lock(&self.groups).insert(status.group.clone(), status);
    }
}
