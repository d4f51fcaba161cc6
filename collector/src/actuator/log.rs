//! The log actuator: records the request in the log and accepts it. Dry-run decisions go
//! here whatever actuator is configured.

use std::time::Instant;

use super::{Actuator, AttemptLog, AttemptResult, BoxFuture, ResizeRequest, Verdict};

/// Records requests through `tracing` only.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogActuator;

impl Actuator for LogActuator {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let started_at = chrono::Utc::now();
            let t0 = Instant::now();
            let json =
                serde_json::to_string(request).unwrap_or_else(|e| format!("<unserializable: {e}>"));
            tracing::info!(
                id = %request.id,
                group = %request.group,
                vm = %request.vm,
                direction = %request.direction,
                from = %request.from.rung,
                to = %request.to.rung,
                dry_run = request.dry_run,
                request = %json,
                "resize request recorded"
            );
            attempts
                .record(started_at, t0.elapsed(), AttemptResult::Logged)
                .await;
            Verdict::Accepted
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::actuator::tests::request;

    #[tokio::test]
    async fn the_log_actuator_accepts_and_records_one_attempt() {
        let mut log = AttemptLog::default();
        let verdict = LogActuator.send(&request(), &mut log).await;
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(log.made().len(), 1);
        assert_eq!(log.made()[0].result, AttemptResult::Logged);
        assert_eq!(LogActuator.kind(), "log");
    }
}
