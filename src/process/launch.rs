//! The launcher thread: every `Process` is forked (or spawned) from one
//! long-lived thread, because `PR_SET_PDEATHSIG` fires when the *thread* that
//! forked a child exits. A process started from a short-lived thread would
//! otherwise be killed with that thread.
//!
//! Each process has its own launcher: a child made by `fork` inherits the
//! parent's channel but not its thread, so the channel is keyed by pid and a
//! child starts a launcher of its own (a recursive process tree).

use crate::sync::fork_mutex::ForkMutex;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The launcher's channel and the pid of the process whose thread reads it.
static LAUNCHER: ForkMutex<Option<(u32, mpsc::Sender<Job>)>> = ForkMutex::new(None);

/// Runs `f` on the launcher thread (started on first use) and returns its
/// result.
pub(crate) fn on_launcher<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    {
        let mut launcher = LAUNCHER.lock();
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
