//! The launcher thread: every `Process` is forked (or spawned) from one
//! long-lived thread, because `PR_SET_PDEATHSIG` fires when the *thread* that
//! forked a child exits. A process started from a short-lived thread would
//! otherwise be killed with that thread.
//!
//! Each process has its own launcher: a child made by `fork` inherits the
//! parent's channel but not its thread, so the channel is keyed by pid and a
//! child starts a launcher of its own (a recursive process tree).

use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

/// The launcher's channel and the pid of the process whose thread reads it.
static LAUNCHER: Mutex<Option<(u32, mpsc::Sender<Job>)>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<(u32, mpsc::Sender<Job>)>> {
    LAUNCHER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held across every `fork` of this crate, so that no child is made while
/// another thread holds the lock: the child would find it held for ever.
pub(crate) fn hold_for_fork() -> impl Sized {
    lock()
}

/// Runs `f` on the launcher thread (started on first use) and returns its
/// result.
pub(crate) fn on_launcher<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    {
        let mut launcher = lock();
        let me = std::process::id();
        if let Some(stale) = launcher.take_if(|(pid, _)| *pid != me) {
            // The parent's, inherited through fork: its reader is not in
            // this process. Forgotten, not dropped: dropping would touch a
            // channel whose other threads vanished mid-operation.
            std::mem::forget(stale);
        }
        let (_, sender) = launcher.get_or_insert_with(|| {
            let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("shmpool-launcher".into())
                .spawn(move || jobs_rx.into_iter().for_each(|job| job()))
                .expect("cannot start the shmpool launcher thread");
            (me, jobs_tx)
        });
        sender
            .send(job)
            .expect("the launcher thread runs for the whole program");
    }
    rx.recv()
        .expect("the launcher thread runs every job it gets")
}
