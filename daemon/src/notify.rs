//! Readiness for systemd (`Type=notify` units): `READY=1`, `RELOADING=1`, `STOPPING=1`.
//!
//! Every call does nothing when `NOTIFY_SOCKET` is unset (the daemon was not started
//! by systemd as `Type=notify`), and a failure to notify is logged, never fatal: a
//! daemon that works must not stop over its status line.

use sd_notify::NotifyState;

/// The daemon is ready: its configuration is loaded and it serves (`READY=1`); also
/// the end of a reload.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// The daemon is re-reading its configuration (`RELOADING=1`).
pub fn reloading() {
    // systemd 253+ wants the monotonic time with RELOADING=1; 252 ignores it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The daemon is shutting down (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
