//! The callback thread: runs the `callback` / `error_callback` of `*_async_with`
//! submissions in the parent, one at a time, in the order the work completes.
//!
//! One thread per pool, started on first use. It learns which slots finished
//! from the workers' finish logs (`sync::finish_log`), so each completion
//! costs O(1), however many results wait: a table from slot to waiting result
//! says whose callbacks may now run. When a log overflowed or the supervisor
//! finished slots itself (a worker died, the pool was terminated), it rescans
//! every waiting result once. While results wait, it sleeps on the header's
//! `done` wake word, which every finisher notifies after logging; with none
//! waiting, on a wake word of its own that only submissions with callbacks
//! notify (see `docs/ARCHITECTURE.md`, "imap and callbacks").
//!
//! The same thread wakes the futures of awaited results (`pool::waker`): an
//! awaited result without callbacks is a waiting entry whose "callback"
//! wakes a `Waker`. An imap stream waiting for any of its chunks is a
//! [`Polled`] entry, checked every round while the thread watches `done`.
//!
//! A panicking callback is caught: its message goes to the result's handle
//! ([`Error::CallbackPanicked`](crate::Error::CallbackPanicked)) and the thread
//! goes on — unlike CPython, whose result handler dies and leaves the pool
//! wedged (bpo-83371 / gh-83371). A callback that waits for a result of the
//! same pool whose callbacks are pending would wait for this very thread:
//! `AsyncResult::get` returns an error and `wait` returns `false` at once
//! ([`on_callback_thread_of`]). One that blocks on anything else is waited
//! for by `join`, and by `terminate` for [`STOP_GRACE`] only.

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::result::Shared;
use crate::shm::layout::Layout;
use crate::sync::lock;
use crate::sync::wake::WakeWord;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `terminate` (and drop) waits for the callback thread once every
/// slot is finished: a callback still running after that is left behind.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

thread_local! {
    /// On a callback thread: the address of the core it serves, else 0.
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is `core`'s callback thread (so a wait for a
/// result whose callbacks are pending would wait for itself).
pub(crate) fn on_callback_thread_of(core: &Core) -> bool {
    SERVING.with(|s| s.get()) == core as *const Core as usize
}

/// A result waiting for its callbacks.
pub(crate) trait Pending: Send {
    fn is_done(&self) -> bool;
    /// A handle that tells whether the work is done, usable after `self`
    /// moved to the callback thread.
    fn progress(&self) -> Arc<dyn Progress>;
    /// Calls `each` with the slot of every chunk.
    fn for_each_slot(&self, each: &mut dyn FnMut(u32));
    /// Whether nobody wants the result any more (an awaiting future was
    /// dropped): the entry is then dropped without being delivered.
    fn is_abandoned(&self) -> bool {
        false
    }
    /// Runs the right callback; called once, after `is_done`.
    fn deliver(self: Box<Self>);
}

/// A stream (an `Imap` being polled) waiting for any of some slots to finish.
#[derive(Default)]
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) struct Polled {
    /// The slots whose finishing wakes the stream; empty once the stream is
    /// gone. Indices only: a slot reused since is at worst a spurious wake.
    pub(crate) slots: Mutex<Vec<u32>>,
    pub(crate) waker: Mutex<Option<Waker>>,
    /// Whether the thread holds this entry (so a poll need not hand it over).
    pub(crate) queued: AtomicBool,
}

impl Polled {
    /// Whether the entry is ready to wake (a slot finished) or to drop
    /// (`slots` empty).
    fn is_due(&self, layout: &Layout) -> bool {
        let slots = lock(&self.slots);
        slots.is_empty() || slots.iter().any(|&i| layout.slot(i).is_done())
    }

    /// Wakes the stream. `queued` is cleared before the waker is taken: a
    /// poll that stored a new waker either sees `queued` clear (and hands the
    /// entry over again) or has its waker taken here.
    fn wake(&self) {
        self.queued.store(false, Ordering::SeqCst);
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Whether a result's work is done.
pub(crate) trait Progress: Send + Sync {
    fn is_done(&self) -> bool;
}

impl<R: Send + Sync> Progress for Shared<R> {
    fn is_done(&self) -> bool {
        Shared::is_done(self)
    }
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

    fn progress(&self) -> Arc<dyn Progress> {
        Arc::clone(&self.shared) as Arc<dyn Progress>
    }

    fn for_each_slot(&self, each: &mut dyn FnMut(u32)) {
        self.shared.job().chunks().for_each(|c| each(c.slot));
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
        shared.delivered(ran.err().map(|p| crate::panic::panic_message(&p)));
    }
}

/// The parent's handle on the callback thread.
#[derive(Default)]
pub(crate) struct Callbacks {
    incoming: Mutex<Vec<Box<dyn Pending>>>,
    /// Streams to watch, handed over by `poll_next`.
    incoming_polled: Mutex<Vec<Arc<Polled>>>,
    /// Slots that finished (or whose result was abandoned) without a
    /// finish-log entry: looked at as if logged (`look_at`).
    notices: Mutex<Vec<u32>>,
    has_notices: AtomicBool,
    /// Whether `incoming` is non-empty, so the thread checks it without the lock.
    has_incoming: AtomicBool,
    /// The thread sleeps here while no result waits for callbacks; `watch`
    /// and `stop_and_join` notify it (a wake word in this process's memory).
    arrivals: WakeWord,
    /// Set when slots finished without a log entry: check every waiting result.
    rescan: AtomicBool,
    stop: AtomicBool,
    /// Whether `thread` was ever started (a lock-free check per submission).
    started: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Callbacks {
    /// Hands `pending` to `core`'s callback thread, starting it if needed.
    pub(crate) fn watch(core: &Arc<Core>, pending: Box<dyn Pending>) -> Result<(), Error> {
        let this = &core.callbacks;
        let progress = pending.progress();
        {
            let mut incoming = lock(&this.incoming);
            incoming.push(pending);
            this.has_incoming.store(true, Ordering::SeqCst);
        }
        // A syscall only if the thread sleeps with nothing to deliver: once
        // it holds a waiting result it sleeps on `done` instead.
        this.arrivals.notify_sleepers();
        Callbacks::ensure_started(core)?;
        // No wake-up on `done` per submission: the thread checks `incoming`
        // before it sleeps, and a task finishing after the push wakes it with
        // its log entry. Only a task already finished may have logged before
        // the thread knew it: then wake the thread here. The fence pairs with
        // the one in the finisher's notify, so one of the two sides sees the
        // other.
        fence(Ordering::SeqCst);
        if progress.is_done() {
            core.layout().header().done.notify_sleepers();
        }
        Ok(())
    }

    /// Hands a polled stream's entry to the thread (starting it if needed),
    /// unless the thread holds it already.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn watch_polled(core: &Arc<Core>, polled: &Arc<Polled>) -> Result<(), Error> {
        let this = &core.callbacks;
        if polled.queued.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        lock(&this.incoming_polled).push(Arc::clone(polled));
        this.has_incoming.store(true, Ordering::SeqCst);
        this.arrivals.notify_sleepers();
        Callbacks::ensure_started(core)?;
        // As in `watch`: a chunk that finished before the thread watched.
        core.layout().header().done.notify_sleepers();
        Ok(())
    }

    /// Asks the thread to look at `slots` as if a finish log named them:
    /// they finished without an entry (withdrawn by `abort`), or their
    /// awaiting future was dropped. Nothing to do if the thread never ran.
    pub(crate) fn look_at(&self, layout: &Layout, slots: &[u32]) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        lock(&self.notices).extend_from_slice(slots);
        self.has_notices.store(true, Ordering::SeqCst);
        // It sleeps on `done` whenever it holds a waiting result.
        layout.header().done.notify_sleepers();
    }

    fn ensure_started(core: &Arc<Core>) -> Result<(), Error> {
        let this = &core.callbacks;
        if !this.started.load(Ordering::Acquire) {
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
                this.started.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Supervisor side: slots finished without a finish-log entry (a worker
    /// died, or the pool was terminated). The caller then notifies `done`.
    pub(crate) fn rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
    }

    /// Delivers everything still pending (the pool's work has ended), then
    /// stops the thread. With a `grace`, gives up waiting after it (a
    /// callback that blocks forever must not hang `terminate`): the thread is
    /// left to finish on its own, and one line on stderr says so.
    pub(crate) fn stop_and_join(&self, layout: &Layout, grace: Option<Duration>) {
        self.stop.store(true, Ordering::SeqCst);
        self.arrivals.notify_all();
        layout.header().done.notify_all();
        let handle = lock(&self.thread).take();
        let Some(handle) = handle else {
            return;
        };
        // A callback that drops the pool runs on this very thread.
        if handle.thread().id() == std::thread::current().id() {
            return;
        }
        if let Some(grace) = grace {
            let deadline = Instant::now() + grace;
            let mut pause = Duration::from_micros(50);
            while !handle.is_finished() {
                if Instant::now() >= deadline {
                    eprintln!(
                        "shmpool: a result callback is still running {grace:?} after the pool \
                         was terminated; no longer waiting for the callback thread"
                    );
                    return; // detached: it holds the core, so nothing it uses goes away
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        }
        let _ = handle.join();
    }
}

fn run(core: &Core) {
    SERVING.with(|s| s.set(core as *const Core as usize));
    let callbacks = &core.callbacks;
    let layout = core.layout();
    let logs = || (0..core.processes as u32).map(|k| layout.finish_log(k));
    let mut waiting = Waiting::default();
    let mut arrived = Vec::new();
    let mut polled: Vec<Arc<Polled>> = Vec::new();
    let mut notices = Vec::new();
    loop {
        let stopping = callbacks.stop.load(Ordering::SeqCst);
        if callbacks.has_incoming.load(Ordering::SeqCst) {
            // Cleared first: a push after this is seen next round.
            callbacks.has_incoming.store(false, Ordering::SeqCst);
            arrived.append(&mut lock(&callbacks.incoming));
            polled.append(&mut lock(&callbacks.incoming_polled));
        }
        // Pairs with the fence in each finisher's notify: a slot that finishes
        // after the check in `add` is in a log drained below or later.
        fence(Ordering::SeqCst);
        // Whether anything happened this round (results arrived or callbacks
        // ran): if so, more is likely to follow soon.
        let mut progressed = !arrived.is_empty();
        arrived.drain(..).for_each(|p| waiting.add(p));
        let mut rescan = stopping || callbacks.rescan.swap(false, Ordering::SeqCst);
        for log in logs() {
            rescan |= log.drain(|slot| progressed |= waiting.finished(slot));
        }
        if callbacks.has_notices.swap(false, Ordering::SeqCst) {
            notices.append(&mut lock(&callbacks.notices));
            for slot in notices.drain(..) {
                progressed |= waiting.finished(slot);
            }
        }
        if rescan {
            progressed |= waiting.deliver_all_done();
        }
        // Streams: wake those with a finished chunk (all of them when
        // stopping: their chunks are finished, or never will be).
        polled.retain(|p| {
            if stopping || p.is_due(layout) {
                p.wake();
                progressed = true;
                false
            } else {
                true
            }
        });
        if stopping && waiting.is_empty() && !callbacks.has_incoming.load(Ordering::SeqCst) {
            return;
        }
        if progressed {
            // Results are streaming in. Let a batch gather instead of parking:
            // a parked thread costs every finishing worker a wake-up syscall
            // and this thread a context switch per result, which on a busy
            // machine starves the submitting thread (measured: 100,000
            // callbacks at ~0.4 M/s parked versus ~2 M/s batched).
            std::thread::sleep(BATCH_PAUSE);
            continue;
        }
        let news = || {
            callbacks.stop.load(Ordering::SeqCst)
                || callbacks.rescan.load(Ordering::SeqCst)
                || callbacks.has_incoming.load(Ordering::SeqCst)
                || callbacks.has_notices.load(Ordering::SeqCst)
                || logs().any(|log| log.has_news())
                || polled.iter().any(|p| p.is_due(layout))
        };
        if waiting.is_empty() && polled.is_empty() {
            // Nothing to deliver: sleep until a result is handed over, not on
            // `done`, which every finishing task of the pool notifies (a pool
            // that once used callbacks would otherwise pay a wake-up syscall
            // per task: imap_unordered 4.5 -> 1.2 M items/s, measured).
            callbacks.arrivals.park_unless(
                || {
                    callbacks.stop.load(Ordering::SeqCst)
                        || callbacks.has_incoming.load(Ordering::SeqCst)
                },
                None,
            );
        } else {
            layout.header().done.park_unless(news, None);
        }
    }
}

/// How long the thread pauses between batches while results stream in: a
/// bound on the latency it adds to a callback (the kernel rounds it up to
/// its timer slack, ~50 µs).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_micros(20);

/// The results whose callbacks have not run, and which slot belongs to which.
#[derive(Default)]
struct Waiting {
    /// Results by key; `None` marks a free key.
    results: Vec<Option<Box<dyn Pending>>>,
    free_keys: Vec<usize>,
    /// `key + 1` of the result owning each slot index, or 0.
    owner_of_slot: Vec<usize>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.results.len() == self.free_keys.len()
    }

    /// Delivers `pending` now if it is done, else keeps it until its slots
    /// show up in a finish log.
    fn add(&mut self, pending: Box<dyn Pending>) {
        if pending.is_abandoned() {
            return;
        }
        if pending.is_done() {
            pending.deliver();
            return;
        }
        let key = self.free_keys.pop().unwrap_or(self.results.len());
        let owners = &mut self.owner_of_slot;
        pending.for_each_slot(&mut |slot| {
            let slot = slot as usize;
            if owners.len() <= slot {
                owners.resize(slot + 1, 0);
            }
            owners[slot] = key + 1;
        });
        if key == self.results.len() {
            self.results.push(Some(pending));
        } else {
            self.results[key] = Some(pending);
        }
    }

    /// A log says `slot` finished: delivers its owner if all of the owner's
    /// chunks are done. Returns whether a callback ran.
    fn finished(&mut self, slot: u32) -> bool {
        match self.owner_of_slot.get(slot as usize) {
            Some(&owner) if owner != 0 => self.deliver_if_done(owner - 1),
            _ => false, // a slot without callbacks, or a stale entry
        }
    }

    /// Delivers every result that is done (after finishes that left no log
    /// entry). Returns whether a callback ran.
    fn deliver_all_done(&mut self) -> bool {
        let mut delivered = false;
        for key in 0..self.results.len() {
            delivered |= self.deliver_if_done(key);
        }
        delivered
    }

    fn deliver_if_done(&mut self, key: usize) -> bool {
        let abandoned = match &self.results[key] {
            Some(p) if p.is_abandoned() => true,
            Some(p) if p.is_done() => false,
            _ => return false,
        };
        let pending = self.results[key].take().expect("checked above");
        let owners = &mut self.owner_of_slot;
        pending.for_each_slot(&mut |slot| owners[slot as usize] = 0);
        self.free_keys.push(key);
        if abandoned {
            // Its result is dropped here: unstarted tasks are withdrawn.
            drop(pending);
            return false;
        }
        pending.deliver();
        true
    }
}
