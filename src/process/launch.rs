//! The launcher thread: every `Process` is forked (or spawned) from one
//! long-lived thread, because `PR_SET_PDEATHSIG` fires when the *thread* that
//! forked a child exits. A process started from a short-lived thread would
//! otherwise be killed with that thread.

use std::sync::mpsc;
use std::sync::Mutex;

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Runs `f` on the launcher thread (started on first use) and returns its
/// result.
pub(crate) fn on_launcher<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    {
        let mut launcher = LAUNCHER.lock().unwrap_or_else(|e| e.into_inner());
        let sender = launcher.get_or_insert_with(|| {
            let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("shmpool-launcher".into())
                .spawn(move || jobs_rx.into_iter().for_each(|job| job()))
                .expect("cannot start the shmpool launcher thread");
            jobs_tx
        });
        sender
            .send(job)
            .expect("the launcher thread runs for the whole program");
    }
    rx.recv()
        .expect("the launcher thread runs every job it gets")
}
