//! The callback thread: runs the `callback` / `error_callback` of `*_async_with`
//! submissions in the parent, one at a time, in the order the work completes.
//!
//! One thread per pool, started on first use. It keeps the pending results,
//! delivers every finished one, and sleeps on the header's `done` wake word
//! (which every finishing worker notifies) when none is finished. A panicking
//! callback is caught: its message goes to the result's handle
//! ([`Error::CallbackPanicked`](crate::Error::CallbackPanicked)) and the thread
//! goes on — unlike CPython, whose result handler dies and leaves the pool
//! wedged (bpo-83371 / gh-83371).

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::result::Shared;
use crate::shm::layout::Layout;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A result waiting for its callbacks.
pub(crate) trait Pending: Send {
    fn is_done(&self) -> bool;
    /// Runs the right callback; called once, after `is_done`.
    fn deliver(self: Box<Self>);
}

/// A result and the two callbacks to run on it.
pub(crate) struct Watched<R> {
    pub(crate) shared: Arc<Shared<R>>,
    pub(crate) on_ok: Box<dyn FnOnce(R) + Send>,
    pub(crate) on_err: Box<dyn FnOnce(Error) + Send>,
}

impl<R: Clone + Send + Sync + 'static> Pending for Watched<R> {
    fn is_done(&self) -> bool {
        self.shared.is_done()
    }

    fn deliver(self: Box<Self>) {
        let Watched {
            shared,
            on_ok,
            on_err,
        } = *self;
        let value = shared.collect().clone();
        let ran = std::panic::catch_unwind(AssertUnwindSafe(move || match value {
            Ok(v) => on_ok(v),
            Err(failure) => on_err(failure.into()),
        }));
        shared.delivered(ran.err().map(|p| crate::pool::worker::panic_message(&p)));
    }
}

/// The parent's handle on the callback thread.
#[derive(Default)]
pub(crate) struct Callbacks {
    incoming: Mutex<Vec<Box<dyn Pending>>>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Callbacks {
    /// Hands `pending` to `core`'s callback thread, starting it if needed.
    pub(crate) fn watch(core: &Arc<Core>, pending: Box<dyn Pending>) -> Result<(), Error> {
        let this = &core.callbacks;
        lock(&this.incoming).push(pending);
        let mut thread = lock(&this.thread);
        if thread.is_none() {
            // The thread owns a reference to the core, so the core (and the
            // segment the pending results live in) outlives it.
            let core = Arc::clone(core);
            *thread = Some(
                std::thread::Builder::new()
                    .name("shmpool-callbacks".into())
                    .spawn(move || run(&core))?,
            );
        }
        drop(thread);
        core.layout().header().done.notify_sleepers();
        Ok(())
    }

    /// Delivers everything still pending (the pool's work has ended), then
    /// stops the thread.
    pub(crate) fn stop_and_join(&self, layout: &Layout) {
        self.stop.store(true, Ordering::SeqCst);
        layout.header().done.notify_all();
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            // A callback that drops the pool runs on this very thread.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

fn run(core: &Core) {
    let callbacks = &core.callbacks;
    let layout = core.layout();
    let mut pending: Vec<Box<dyn Pending>> = Vec::new();
    loop {
        pending.append(&mut lock(&callbacks.incoming));
        let mut i = 0;
        let mut delivered = false;
        while i < pending.len() {
            if pending[i].is_done() {
                pending.remove(i).deliver();
                delivered = true;
            } else {
                i += 1;
            }
        }
        if pending.is_empty()
            && callbacks.stop.load(Ordering::SeqCst)
            && lock(&callbacks.incoming).is_empty()
        {
            return;
        }
        if delivered {
            continue;
        }
        layout.header().done.park_unless(
            || {
                callbacks.stop.load(Ordering::SeqCst)
                    || !lock(&callbacks.incoming).is_empty()
                    || pending.iter().any(|p| p.is_done())
            },
            None,
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
