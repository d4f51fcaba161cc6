//! The threads that build fleet-wide responses: a `/metrics` scrape, the API's
//! listings and the status page each walk every VM and can take a core for a second
//! at 20 000 VMs.
//!
//! They never run on the async workers, which carry the agents' streams: a worker
//! busy rendering delays every report queued behind it. They run here instead, on a
//! few threads of their own whose nice value is raised by [`NICE_INCREMENT`], so that
//! when cores are short the kernel serves ingest first and a scrape takes longer. The
//! queue is bounded: past [`QUEUE`] waiting reads a request is refused with a 503
//! instead of piling up memory.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use tokio::sync::oneshot;

/// How many reads may wait for a thread.
pub const QUEUE: usize = 16;

/// How much nicer than the collector's other threads the read threads run.
pub const NICE_INCREMENT: i32 = 10;

/// The highest nice value Linux accepts.
const NICE_MAX: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the read threads; clones share them, and the threads end when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct Reads {
    jobs: mpsc::SyncSender<Job>,
}

/// Why a read produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The queue is full.
    #[error("{QUEUE} fleet-wide reads are already waiting; try again shortly")]
    Busy,
    /// The read panicked (the panic is in the log).
    #[error("the read failed: its thread panicked")]
    Panicked,
}

impl Reads {
    /// Starts `threads` read threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("rally-read-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held while waiting: one idle thread waits on the
                        // channel, the others on the lock.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { return };
                        // A panicking read drops its answer (the caller sees
                        // `Panicked`); the thread stays for the next one.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `read` on a read thread and returns what it returned.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let (answer, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(read());
        });
        self.jobs.try_send(job).map_err(|_| ReadError::Busy)?;
        result.await.map_err(|_| ReadError::Panicked)
    }
}

/// Raises this thread's nice value by [`NICE_INCREMENT`] (Linux's nice is per
/// thread). Without it the reads only compete on equal terms, so a failure is logged,
/// not fatal.
fn lower_priority() {
    let thread = Some(rustix::thread::gettid());
    let result = rustix::process::getpriority_process(thread).and_then(|nice| {
        rustix::process::setpriority_process(thread, (nice + NICE_INCREMENT).min(NICE_MAX))
    });
    if let Err(error) = result {
        tracing::warn!(%error, "could not lower the priority of a read thread");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_run_on_nicer_threads_and_survive_a_panic() {
        let reads = Reads::start(1).unwrap();
        let ours = rustix::process::getpriority_process(None).unwrap();
        let (name, nice) = reads
            .run(|| {
                let thread = std::thread::current().name().map(str::to_owned);
                let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
                (thread, nice.unwrap())
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("rally-read-0"));
        assert_eq!(nice, (ours + NICE_INCREMENT).min(NICE_MAX));

        let failed = reads.run(|| -> u32 { panic!("a broken read") }).await;
        assert!(matches!(failed, Err(ReadError::Panicked)), "{failed:?}");
        // The same thread still answers.
        assert_eq!(reads.run(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        use futures_util::FutureExt as _;
        let reads = Reads::start(1).unwrap();
        let (started, thread_busy) = mpsc::channel();
        let (release, hold) = mpsc::channel::<()>();
        // One read occupies the only thread until released ...
        let first = reads.run(move || {
            started.send(()).unwrap();
            hold.recv().unwrap();
        });
        assert!(first.now_or_never().is_none());
        thread_busy.recv().unwrap();
        // ... QUEUE more wait (a dropped caller's read still runs, unanswered) ...
        for _ in 0..QUEUE {
            assert!(reads.run(|| ()).now_or_never().is_none());
        }
        // ... and the next is refused at once.
        let refused = reads.run(|| ()).now_or_never();
        assert!(matches!(refused, Some(Err(ReadError::Busy))), "{refused:?}");
        release.send(()).unwrap();
    }
}
