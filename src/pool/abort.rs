//! Aborting a result's work (`AsyncResult::abort`), and stopping every worker
//! at once (`Pool::terminate_workers` / `kill_workers`).
//!
//! A chunk still `QUEUED` is finished here, in the parent, with the outcome
//! `Aborted`: the slot is taken with the same CAS a claim uses (to a
//! placeholder holder no worker has), so either a worker claimed it first
//! (then it is running) or no worker ever will. A chunk `RUNNING(k)` is
//! handed to the supervisor, which alone may signal worker k (it owns the
//! child and knows it is not reaped, so the pid names no other process): it
//! kills k and, once it reaps k, finishes the slot with `Aborted` instead of
//! `WorkerDied` or a retry. See `docs/ARCHITECTURE.md`, "Awaiting and
//! aborting".

use crate::pool::result::Shared;
use crate::sync::slot::{Outcome, SlotState, MAX_WORKER_INDEX};

/// Stops `shared`'s unfinished work; returns whether there was any.
pub(crate) fn abort<R>(shared: &Shared<R>) -> bool {
    // First, so that a waiter woken by a finished chunk reads `Aborted`.
    if !shared.settle_aborted() {
        return false;
    }
    let core = shared.core();
    let layout = core.layout();
    let mut withdrawn = Vec::new();
    let mut running = Vec::new();
    for chunk in shared.job().chunks() {
        let slot = layout.slot(chunk.slot);
        loop {
            match slot.state() {
                SlotState::Queued => {
                    if slot.finish_for(|s| s == SlotState::Queued, Outcome::Aborted, 0, -1) {
                        withdrawn.push(chunk.slot);
                        break;
                    }
                    // A worker claimed it meanwhile: look again.
                }
                SlotState::Running { worker } if worker != MAX_WORKER_INDEX => {
                    running.push(chunk.slot);
                    break;
                }
                // Done, or being finished by the supervisor right now.
                _ => break,
            }
        }
    }
    if !running.is_empty() {
        core.supervisor.abort(&running);
    }
    if !withdrawn.is_empty() {
        // They finished without a finish-log entry.
        core.callbacks.look_at(layout, &withdrawn);
    }
    if !shared.has_callbacks() {
        // With callbacks, the future waits for them (`Shared::delivered`).
        shared.waker.wake();
    }
    true
}
