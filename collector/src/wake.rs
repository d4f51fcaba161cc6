//! The nudge from ingest to the resize engine: which VMs reported since the engine last
//! looked, and a wake-up.
//!
//! Ingest marks the VM of every report it applied ([`Wake::reported`]) and goes on: it
//! never waits for the engine. The engine takes the marked VMs ([`Wake::take_into`]) and
//! evaluates their groups, at most once per group per short gap, so a rule's `for` that
//! runs out is acted on within that gap instead of at the next tick. This module imports
//! nothing else of the crate, so both sides can use it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The VMs that reported since the engine last looked (at most one entry per VM, so
/// bounded by the fleet's size), and the engine's wake-up.
#[derive(Debug, Default)]
pub struct Wake {
    reported: Mutex<HashSet<String>>,
    notify: Notify,
}

impl Wake {
    fn set(&self) -> MutexGuard<'_, HashSet<String>> {
        self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `vm` as having reported and wakes the engine. Constant time: the lock only
    /// guards a set look-up (and one string per VM between two looks of the engine).
    pub fn reported(&self, vm: &str) {
        {
            let mut set = self.set();
            if set.contains(vm) {
                // Marked since the engine last looked: its wake-up is already pending.
                return;
            }
            set.insert(vm.to_owned());
        }
        self.notify.notify_one();
    }

    /// Waits until a VM is marked (at once if one was marked since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Moves the marked VMs into `into` (cleared first), leaving none marked; `into`'s
    /// old allocation becomes the next set, so steady state allocates no table.
    pub fn take_into(&self, into: &mut HashSet<String>) {
        into.clear();
        std::mem::swap(&mut *self.set(), into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_report_wakes_the_engine_once_per_vm_until_it_looks() {
        let wake = Wake::default();
        wake.reported("web-1");
        wake.reported("web-1");
        wake.reported("web-2");
        // A wake-up is pending: this returns at once.
        wake.wait().await;
        let mut taken = HashSet::new();
        wake.take_into(&mut taken);
        let mut vms: Vec<_> = taken.iter().cloned().collect();
        vms.sort();
        assert_eq!(vms, ["web-1", "web-2"]);
        wake.take_into(&mut taken);
        assert!(taken.is_empty(), "taken once");
        // Marked again after the look: a new wake-up.
        wake.reported("web-1");
        wake.wait().await;
        wake.take_into(&mut taken);
        assert_eq!(taken.len(), 1);
    }
}
