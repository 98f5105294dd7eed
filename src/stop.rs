//! The control plane's stop signal: the control thread turns it on once, and every task it
//! runs (admin server, backplane, stats line, console sampler, memory sampler) selects on
//! [`stopped`] to end. Runs on the control thread.
//!
//! A leaf of its own, so that the tasks need not import the control plane that spawns them.

use tokio::sync::watch;

/// A task's end of the stop signal; `true` once stopping has begun.
pub type Stopping = watch::Receiver<bool>;

/// Resolves once the control plane is stopping (or its stop signal is gone).
pub async fn stopped(stopping: &mut Stopping) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stopping.wait_for(|s| *s).await;
}
