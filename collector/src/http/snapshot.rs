//! Fleet snapshots shared by the fleet-wide reads that overlap.
//!
//! Copying every VM's summary is the part of a `/metrics` scrape or an `/api/v1/vms`
//! read that runs on the async workers, beside ingest (see
//! [`crate::fleet::Snapshot`]). When a read starts while another read's snapshot is
//! still being copied, it waits for that copy and reads it too: two reads that overlap
//! copy the fleet once. A copy already finished is never handed out again, so no read
//! sees the fleet as it was before the read began, save for the VMs the copy in
//! progress had already passed.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use tokio::sync::OnceCell;

use crate::fleet::VmSummary;

/// Every VM's summary, in (group, id) order, and the time it was taken at.
#[derive(Debug)]
pub struct Taken {
    /// The summaries.
    pub summaries: Vec<VmSummary>,
    /// The clock's time the summaries were taken at.
    pub now: SystemTime,
}

/// A copy in progress: set once, by whichever of its readers copies.
type Copy = OnceCell<Arc<Taken>>;

/// The snapshot being copied, if any; one per HTTP listener.
#[derive(Debug, Default)]
pub struct Snapshots {
    copying: Mutex<Weak<Copy>>,
}

impl Snapshots {
    /// The snapshot being copied when this is called, or a new one that `copy` takes;
    /// and whether this call copied it. If the read that copies is dropped half-way
    /// (its client went away), a read waiting on it copies in its place.
    pub async fn take<E, F, Fut>(&self, copy: F) -> Result<(Arc<Taken>, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Taken, E>>,
    {
        let cell = self.join();
        let mut copied = false;
        let taken = cell
            .get_or_try_init(|| {
                copied = true;
                async { copy().await.map(Arc::new) }
            })
            .await?;
        Ok((Arc::clone(taken), copied))
    }

    /// The copy in progress, or a new one.
    fn join(&self) -> Arc<Copy> {
        let mut copying = self.copying.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = copying.upgrade()
            && !cell.initialized()
        {
            return cell;
        }
        let cell = Arc::new(OnceCell::new());
        *copying = Arc::downgrade(&cell);
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// A copy that counts itself and finishes when `release` is notified.
    async fn copy(copies: &AtomicUsize, release: &Notify) -> Result<Taken, ()> {
        copies.fetch_add(1, Ordering::SeqCst);
        release.notified().await;
        Ok(Taken {
            summaries: Vec::new(),
            now: SystemTime::UNIX_EPOCH,
        })
    }

    #[tokio::test]
    async fn reads_that_overlap_share_one_copy_and_later_reads_copy_again() {
        let snapshots = Snapshots::default();
        let copies = AtomicUsize::new(0);
        let release = Notify::new();
        let first = snapshots.take(|| copy(&copies, &release));
        let second = snapshots.take(|| copy(&copies, &release));
        let released = async {
            tokio::task::yield_now().await;
            release.notify_waiters();
        };
        let (first, second, ()) = tokio::join!(first, second, released);
        let ((first, first_copied), (second, second_copied)) = (first.unwrap(), second.unwrap());
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!((first_copied, second_copied), (true, false));
        assert_eq!(copies.load(Ordering::SeqCst), 1);

        // Finished: the next read copies anew.
        release.notify_one();
        let (third, third_copied) = snapshots.take(|| copy(&copies, &release)).await.unwrap();
        assert!(third_copied);
        assert!(!Arc::ptr_eq(&first, &third));
        assert_eq!(copies.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_left_waiting_by_a_dropped_copy_copies_itself() {
        let snapshots = Snapshots::default();
        let copies = AtomicUsize::new(0);
        let release = Notify::new();
        let mut first = Box::pin(snapshots.take(|| copy(&copies, &release)));
        let mut second = Box::pin(snapshots.take(|| copy(&copies, &release)));
        // The first starts copying, the second waits on it; the first is dropped.
        assert!(poll_once(first.as_mut()).await.is_none());
        assert!(poll_once(second.as_mut()).await.is_none());
        assert_eq!(copies.load(Ordering::SeqCst), 1);
        drop(first);
        release.notify_one();
        let (_, copied) = second.await.unwrap();
        assert!(copied);
        assert_eq!(copies.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_copy_is_the_copier_s_error_and_the_next_read_copies() {
        let snapshots = Snapshots::default();
        let failed = snapshots
            .take(|| async { Err::<Taken, _>("busy") })
            .await
            .unwrap_err();
        assert_eq!(failed, "busy");
        let copies = AtomicUsize::new(0);
        let release = Notify::new();
        release.notify_one();
        let (_, copied) = snapshots.take(|| copy(&copies, &release)).await.unwrap();
        assert!(copied);
    }

    /// Polls `future` once: its output if it was ready.
    async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
