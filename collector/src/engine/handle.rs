//! [`EngineHandle`]: what the HTTP API holds to talk to the engine task. Orders (pause,
//! resume, a manual resize, a reload) go through a bounded channel, so they are ordered
//! with ticks and outcomes; decisions are read from the store directly.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::actuator::Actuator;
use crate::config::Config;
use crate::store::{DecisionFilter, Store, StoreError};
use rally_policy::decision::Decision;

use super::stats::EngineStats;
use super::status::{DecisionRecord, GroupStatus};
use super::{EngineError, OrderError, lock};

/// An operator's order (or a reload) for the engine task, with where to answer.
pub(super) enum Order {
    Pause {
        group: String,
        reply: oneshot::Sender<Result<GroupStatus, OrderError>>,
    },
    Resume {
        group: String,
        reply: oneshot::Sender<Result<GroupStatus, OrderError>>,
    },
    Resize {
        vm: String,
        rung: String,
        reply: oneshot::Sender<Result<Decision, OrderError>>,
    },
    Reconfigure {
        config: Box<Config>,
        actuator: Arc<dyn Actuator>,
        reply: oneshot::Sender<Result<(), OrderError>>,
    },
}

/// What the HTTP API holds: the engine's status, its command channel and the store.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    pub(super) stats: Arc<EngineStats>,
    pub(super) orders: mpsc::Sender<Order>,
    pub(super) store: Arc<Mutex<Store>>,
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Order::Pause { group, .. } => write!(f, "Pause({group})"),
            Order::Resume { group, .. } => write!(f, "Resume({group})"),
            Order::Resize { vm, rung, .. } => write!(f, "Resize({vm}, {rung})"),
            Order::Reconfigure { .. } => write!(f, "Reconfigure"),
        }
    }
}

/// Runs a store call on the blocking pool.
pub(super) async fn with_store<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&mut lock(&store)))
        .await
        .map_err(|e| EngineError::Join(e.to_string()))?
        .map_err(EngineError::from)
}

impl EngineHandle {
    /// The engine's counters and the groups' status.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OrderError>>) -> Order,
    ) -> Result<T, OrderError> {
        let (tx, rx) = oneshot::channel();
        self.orders
            .send(make(tx))
            .await
            .map_err(|_| OrderError::Stopped)?;
        rx.await.map_err(|_| OrderError::Stopped)?
    }

    /// Pauses `group` (an operator's pause; the circuit breaker's stays as it is).
    pub async fn pause(&self, group: &str) -> Result<GroupStatus, OrderError> {
        let group = group.to_owned();
        self.ask(|reply| Order::Pause { group, reply }).await
    }

    /// Resumes `group`, closing its circuit breaker and lifting roll stops.
    pub async fn resume(&self, group: &str) -> Result<GroupStatus, OrderError> {
        let group = group.to_owned();
        self.ask(|reply| Order::Resume { group, reply }).await
    }

    /// Resizes `vm` to `rung` now (min/max and one-at-a-time apply; cooldowns do not).
    pub async fn resize(&self, vm: &str, rung: &str) -> Result<Decision, OrderError> {
        let (vm, rung) = (vm.to_owned(), rung.to_owned());
        self.ask(|reply| Order::Resize { vm, rung, reply }).await
    }

    /// Applies a reloaded configuration's groups, policies, `dry_run` and actuator.
    /// A group that stays keeps its state (flags, cooldowns, a resize in flight); a new
    /// one starts from what the store remembers of it. Requests already with the old
    /// actuator finish there. `[engine]` itself needs a restart.
    pub async fn reconfigure(
        &self,
        config: &Config,
        actuator: Arc<dyn Actuator>,
    ) -> Result<(), OrderError> {
        let config = Box::new(config.clone());
        self.ask(|reply| Order::Reconfigure {
            config,
            actuator,
            reply,
        })
        .await
    }

    /// Decisions matching `filter`, newest first, with attempts and verification.
    pub async fn decisions(
        &self,
        filter: DecisionFilter,
    ) -> Result<Vec<DecisionRecord>, EngineError> {
        with_store(&self.store, move |store| {
            let mut out = Vec::new();
            for stored in store.decisions(&filter)? {
                let id = stored.decision.id.clone();
                out.push(DecisionRecord {
                    attempts: store.attempts(&id)?,
                    verification: store.verification(&id)?,
                    stored,
                });
            }
            Ok(out)
        })
        .await
    }
}
