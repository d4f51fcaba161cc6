//! The threads that build fleet-wide responses: a `/metrics` scrape, the API's
//! listings and the status page each walk every VM and can take a core for a second
//! at 20 000 VMs.
//!
//! They never run on the async workers, which carry the agents' streams: a worker
//! busy rendering delays every report queued behind it. They run here instead, on two
//! pools of threads of their own, so that when cores are short the kernel serves
//! ingest first and a scrape takes longer:
//!
//! - [`Reads::run`]: reads that lock what other threads write (a VM, the engine's
//!   status, the lease), at a nice value raised by [`NICE_INCREMENT`]. A thread
//!   preempted while it holds such a lock still gets a share of a core soon.
//! - [`Reads::render`]: the rendering of what was already gathered (the body of a
//!   scrape or of `/api/v1/vms`, the bulk of their cost), which takes none of the
//!   collector's locks and hands what the async workers allocated back to the first
//!   pool to be freed ([`Reads::drop_later`]). Its threads run under Linux's
//!   `SCHED_IDLE` policy: only when no ordinary thread wants the core, and preempted
//!   as soon as one does. At 20 000
//!   agents on 2 cores, renders niced by +10 still took enough of the cores from
//!   ingest to put the acks' p99 at 36-125 ms (median 66) while `/metrics` and the
//!   API were read every 5 s; under `SCHED_IDLE`, 25-114 ms (median 35), the same
//!   machine in the same hour (BENCHMARKS.md). The price: on a collector whose cores
//!   are saturated, a render waits until they are not, and the scraper may time out
//!   first.
//!
//! Each pool's queue is bounded: past [`QUEUE`] waiting reads a request is refused
//! with a 503 instead of piling up memory.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy, thread_native_id,
};
use tokio::sync::oneshot;

/// How many reads may wait for a thread, in each pool.
pub const QUEUE: usize = 16;

/// How much nicer than the collector's other threads the lock-taking read threads run.
pub const NICE_INCREMENT: i32 = 10;

/// The highest nice value Linux accepts.
const NICE_MAX: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the read threads; clones share them, and the threads end when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct Reads {
    /// Reads that may lock what other threads write.
    locking: mpsc::SyncSender<Job>,
    /// Renders that lock nothing, at `SCHED_IDLE`.
    rendering: mpsc::SyncSender<Job>,
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

/// How a pool's threads are scheduled.
#[derive(Debug, Clone, Copy)]
enum Priority {
    /// Nice value raised by [`NICE_INCREMENT`].
    Nicer,
    /// `SCHED_IDLE` (nicer, if the kernel refuses it).
    Idle,
}

impl Reads {
    /// Starts `threads` threads in each pool.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        Ok(Self {
            locking: pool("rally-read", threads, Priority::Nicer)?,
            rendering: pool("rally-render", threads, Priority::Idle)?,
        })
    }

    /// Runs `read` on a read thread and returns what it returned. `read` may take locks
    /// that other threads take.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        submit(&self.locking, read).await
    }

    /// Runs `render` on a `SCHED_IDLE` thread and returns what it returned. `render`
    /// must take none of the collector's locks: preempted while holding one, it could
    /// keep it until the cores are idle, and stall whoever waits for it. Nor should it
    /// free what the async workers allocated: see [`Reads::drop_later`].
    pub async fn render<T: Send + 'static>(
        &self,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        submit(&self.rendering, render).await
    }

    /// Drops `value` on a [`Reads::run`] thread, or here if that pool's queue is full.
    ///
    /// For what a render is done with that the async workers allocated (a snapshot's
    /// reports): glibc frees a block into the arena of the thread that allocated it,
    /// under that arena's lock, and a `SCHED_IDLE` thread preempted while it holds a
    /// worker's arena lock stalls that worker until a core goes idle. A nicer thread
    /// gets a core back within milliseconds.
    pub fn drop_later<T: Send + 'static>(&self, value: T) {
        // A full queue hands the job back in the error, and it is dropped here.
        let _ = self.locking.try_send(Box::new(move || drop(value)));
    }
}

/// Starts a pool of `threads` threads named `name-N`, scheduled as `priority` says.
fn pool(name: &str, threads: usize, priority: Priority) -> std::io::Result<mpsc::SyncSender<Job>> {
    let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..threads.max(1) {
        let queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                match priority {
                    Priority::Nicer => lower_priority(),
                    Priority::Idle => idle_priority(),
                }
                loop {
                    // The lock is held while waiting: one idle thread waits on the
                    // channel, the others on the lock.
                    let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    // A panicking read drops its answer (the caller sees `Panicked`);
                    // the thread stays for the next one.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
    }
    Ok(jobs)
}

/// Queues `read` on a pool and waits for its answer.
async fn submit<T: Send + 'static>(
    jobs: &mpsc::SyncSender<Job>,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReadError> {
    let (answer, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(read());
    });
    jobs.try_send(job).map_err(|_| ReadError::Busy)?;
    result.await.map_err(|_| ReadError::Panicked)
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

/// Puts this thread under `SCHED_IDLE`, which any thread may choose for itself; if the
/// kernel refuses, the thread is only made nicer.
fn idle_priority() {
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The crate sets the policy, then the nice value to 0, which a collector started
    // with a higher nice value may not do: harmless, `SCHED_IDLE` ignores nice. So the
    // policy is read back rather than the result trusted.
    let _ = thread_priority::set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        idle,
    );
    match thread_priority::thread_schedule_policy() {
        Ok(policy) if policy == idle => {}
        other => {
            tracing::warn!(
                policy = ?other,
                "could not put a render thread under SCHED_IDLE; raising its nice value instead"
            );
            lower_priority();
        }
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

    #[tokio::test]
    async fn renders_run_under_sched_idle_and_survive_a_panic() {
        let reads = Reads::start(1).unwrap();
        let (name, policy) = reads
            .render(|| {
                let thread = std::thread::current().name().map(str::to_owned);
                (thread, thread_priority::thread_schedule_policy().unwrap())
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("rally-render-0"));
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        // The lock-taking pool stays an ordinary (nicer) thread.
        let policy = reads
            .run(|| thread_priority::thread_schedule_policy().unwrap())
            .await
            .unwrap();
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );

        let failed = reads.render(|| -> u32 { panic!("a broken render") }).await;
        assert!(matches!(failed, Err(ReadError::Panicked)), "{failed:?}");
        assert_eq!(reads.render(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn what_a_render_leaves_is_dropped_on_a_read_thread() {
        /// Says, when dropped, which thread dropped it.
        struct Tell(mpsc::Sender<Option<String>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .send(std::thread::current().name().map(str::to_owned));
            }
        }
        let reads = Reads::start(1).unwrap();
        let (tell, dropped_by) = mpsc::channel();
        let disposal = reads.clone();
        reads
            .render(move || disposal.drop_later(Tell(tell)))
            .await
            .unwrap();
        let thread = dropped_by.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(thread.unwrap().as_deref(), Some("rally-read-0"));
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
