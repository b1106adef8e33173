//! The task slot and its state machine — the one place where parent and workers
//! hand a task back and forth.
//!
//! ```text
//!            publish             claim(k)                 finish
//!   FREE ──────────────▶ QUEUED ──────────▶ RUNNING(k) ──────────▶ DONE
//!    ▲   (parent)          │    (worker k,     │   (worker k, or the      │
//!    │                     │     CAS)          │    supervisor once k     │
//!    │        cancel       │                   │    is reaped)            │
//!    ├─────────────────────┘                   │                          │
//!    │                                         │ requeue (supervisor,     │
//!    │                                         ▼  k reaped, retry left)   │
//!    │                                       QUEUED                       │
//!    └───────────────────────── release (parent, result read) ────────────┘
//! ```
//!
//! Who writes what (see `docs/ARCHITECTURE.md`, "Slots"):
//! * `desc` and the input bytes: the parent, only while the slot is `FREE`;
//!   published by the `Release` store of `QUEUED` (and of the ring entry).
//! * the outcome and output bytes: the worker holding `RUNNING(k)`, published
//!   by its `Release` swap to `DONE`; if worker k died, the supervisor writes
//!   them instead, after reaping k (so k cannot write any more).
//! * the parent reads the outcome only after an `Acquire` load saw `DONE`.
//!
//! The state word is also the futex word a parent thread sleeps on: bit
//! [`WAITER`] says "someone sleeps here", so a finishing worker calls
//! `futex_wake` only when it is needed.

// Unsafe code: the slot protocol's cells.
#![allow(unsafe_code)]

use crate::sync::futex;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

const STATE_MASK: u32 = 0xF;
const FREE: u32 = 0;
const QUEUED: u32 = 1;
const RUNNING: u32 = 2;
const DONE: u32 = 3;
/// Set by a parent thread about to sleep on the state word.
const WAITER: u32 = 0x10;
const WORKER_SHIFT: u32 = 8;

/// The largest worker index the state word can name.
pub(crate) const MAX_WORKER_INDEX: u32 = (1 << (32 - WORKER_SHIFT)) - 1;

/// Bytes of inline payload per slot: small arguments and results live here.
pub(crate) const INLINE_CAPACITY: usize = 192;

/// How a task ended, written before `DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Outcome {
    /// The function returned; the output bytes hold its result.
    Returned = 0,
    /// The function panicked; the inline bytes hold `detail` bytes of message.
    Panicked = 1,
    /// The worker died; `detail` is its pid, `signal` the signal or -1.
    WorkerDied = 2,
    /// The pool was terminated before the task finished.
    Terminated = 3,
    /// The task ran longer than the pool's task timeout; its worker was killed.
    TimedOut = 4,
    /// The kernel refused the worker the caller's memory (a zero-copy map
    /// chunk); `detail` is the errno, `signal` 1 if part of the output was
    /// written before.
    AccessRefused = 5,
    /// The task was aborted by the parent: withdrawn before it started, or
    /// stopped by killing its worker (`detail` its pid, `signal` the signal).
    Aborted = 6,
}

impl Outcome {
    /// The outcome a word names; `Err(v)` for a word no finisher writes (the
    /// slot was written over).
    fn from_u32(v: u32) -> Result<Outcome, u32> {
        Ok(match v {
            0 => Outcome::Returned,
            1 => Outcome::Panicked,
            2 => Outcome::WorkerDied,
            3 => Outcome::Terminated,
            4 => Outcome::TimedOut,
            5 => Outcome::AccessRefused,
            6 => Outcome::Aborted,
            _ => return Err(v),
        })
    }
}

/// What a task is: written by the parent while the slot is `FREE`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TaskDesc {
    /// The entry point, relocatable (see `task::EntryPoint`).
    pub(crate) entry: u64,
    /// Segment offset of the input elements.
    pub(crate) input: u64,
    /// Segment offset of the output elements.
    pub(crate) output: u64,
    /// Element count (1 for `apply`).
    pub(crate) len: u64,
    /// How the task ended (an [`Outcome`]), written by whoever finishes it.
    pub(crate) outcome: u32,
    /// Message length for `Panicked`, pid for `WorkerDied`.
    pub(crate) detail: u32,
    /// Signal number for `WorkerDied`, or -1; for `AccessRefused`, whether
    /// output was written.
    pub(crate) signal: i32,
    /// How many times the task was requeued after its worker died (written
    /// by the supervisor, which holds the slot then).
    pub(crate) retries_used: u32,
    /// [`IN_PLACE`], [`WATCHED`], [`REMOTE_INPUT`], [`REMOTE_OUTPUT`], [`SPLIT`],
    /// [`HEAP_INPUT`], [`HEAP_OUTPUT`], [`HEAP_FRESH_OUTPUT`],
    /// written by the parent with the rest.
    pub(crate) flags: u32,
    pub(crate) _reserved: u32,
}

/// [`TaskDesc::flags`]: the task writes its outputs over its inputs (a
/// `map_inplace` chunk), so once it has started it cannot run again: a
/// second run would read what the first one wrote. Its worker's death is
/// `WorkerDied` even with retries left.
pub(crate) const IN_PLACE: u32 = 1;

/// [`TaskDesc::flags`]: the task's result has callbacks; the worker that
/// finishes it writes its slot into its finish log for the callback thread.
pub(crate) const WATCHED: u32 = 2;

/// [`TaskDesc::flags`]: `input` is an address in the parent's memory, not a
/// segment offset (a zero-copy map chunk; see `pool::zero_copy`).
pub(crate) const REMOTE_INPUT: u32 = 4;

/// [`TaskDesc::flags`]: `output` is an address in the parent's memory.
pub(crate) const REMOTE_OUTPUT: u32 = 8;

/// [`TaskDesc::flags`]: a chunk of a synchronous map, which the parent
/// splits in halves to retry when its worker dies: the supervisor does not
/// requeue it whole (unless it has a single element, retried as usual).
pub(crate) const SPLIT: u32 = 16;

/// [`TaskDesc::flags`]: `input` is an offset in the parent's shared heap
/// (`SharedAlloc`), which the worker reaches through its own view of it.
pub(crate) const HEAP_INPUT: u32 = 32;

/// [`TaskDesc::flags`]: `output` is an offset in the parent's shared heap.
pub(crate) const HEAP_OUTPUT: u32 = 64;

/// [`TaskDesc::flags`]: with [`HEAP_OUTPUT`], the output's pages are fresh
/// (never written): the worker populates them in one call.
pub(crate) const HEAP_FRESH_OUTPUT: u32 = 128;

/// A snapshot of a slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Queued,
    Running { worker: u32 },
    Done,
}

/// One task slot: 256 bytes, cache-line aligned, `#[repr(C)]`; all-zero is `FREE`.
#[repr(C, align(64))]
pub(crate) struct TaskSlot {
    state: AtomicU32,
    _pad: u32,
    desc: UnsafeCell<TaskDesc>,
    inline: UnsafeCell<[u8; INLINE_CAPACITY]>,
}

// SAFETY: the UnsafeCell fields are accessed only by the holder of the state the
// slot protocol (module doc) grants access to, and each hand-over goes through an
// Acquire/Release pair on `state` or on the ring entry.
unsafe impl Sync for TaskSlot {}

const _: () = assert!(std::mem::size_of::<TaskSlot>() == 256);
const _: () = assert!(std::mem::offset_of!(TaskSlot, inline) == 64);

impl Default for TaskSlot {
    fn default() -> Self {
        TaskSlot {
            state: AtomicU32::new(FREE),
            _pad: 0,
            desc: UnsafeCell::new(TaskDesc::default()),
            inline: UnsafeCell::new([0; INLINE_CAPACITY]),
        }
    }
}

impl TaskSlot {
    /// The current state (a snapshot).
    pub(crate) fn state(&self) -> SlotState {
        decode(self.state.load(Ordering::Acquire))
    }

    /// The slot's description and inline bytes, to read and write.
    ///
    /// # Safety
    /// The caller holds the slot in a state that gives it access (module
    /// doc), and no other [`Held`] of the slot is alive: the parent while
    /// `FREE`, worker k while it holds `RUNNING(k)`, the supervisor after
    /// reaping k. (The worker's [`claim`](Self::claim) hands one out safely.)
    pub(crate) unsafe fn held(&self) -> Held<'_> {
        Held { slot: self }
    }

    /// Starts fetching the slot's first two lines (state and description,
    /// the start of the inline payload) into this CPU's cache, without
    /// waiting: a hint, never a fault. The next access to them, made after
    /// other work, then finds them there or on their way.
    #[inline]
    pub(crate) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at: *const i8 = (self as *const TaskSlot).cast();
            // SAFETY: a prefetch never faults or changes memory; both lines
            // lie within this slot (256 bytes, 64-aligned).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at);
                _mm_prefetch::<_MM_HINT_T0>(at.add(64));
            }
        }
    }

    /// FREE → QUEUED. Parent only, after writing `desc` and the input.
    pub(crate) fn publish(&self) {
        debug_assert_eq!(self.state(), SlotState::Free);
        self.state.store(QUEUED, Ordering::Release);
    }

    /// QUEUED → RUNNING(worker), and the access that gives. `None` if the
    /// slot is not queued (another worker claimed it, or a stale ring entry
    /// pointed here).
    pub(crate) fn claim(&self, worker: u32) -> Option<Held<'_>> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & STATE_MASK != QUEUED {
                return None;
            }
            let running = (s & WAITER) | RUNNING | (worker << WORKER_SHIFT);
            match self
                .state
                .compare_exchange(s, running, Ordering::AcqRel, Ordering::Acquire)
            {
                // The CAS made this caller the one holder of RUNNING(worker).
                Ok(_) => return Some(Held { slot: self }),
                Err(now) => s = now,
            }
        }
    }

    /// RUNNING → DONE by the worker that holds it, after writing the outcome.
    pub(crate) fn finish(&self) {
        let prev = self.state.swap(DONE, Ordering::AcqRel);
        debug_assert_eq!(prev & STATE_MASK, RUNNING);
        if prev & WAITER != 0 {
            futex::wake(&self.state, i32::MAX);
        }
    }

    /// Finishes the slot on behalf of a worker that can no longer run: if it is
    /// in a state accepted by `from`, writes `outcome` and moves it to DONE.
    /// Supervisor only (the previous holder is reaped or never existed).
    pub(crate) fn finish_for(
        &self,
        from: impl Fn(SlotState) -> bool,
        outcome: Outcome,
        detail: u32,
        signal: i32,
    ) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let state = decode(s);
            if !from(state) {
                return false;
            }
            if s & STATE_MASK == QUEUED {
                // Nobody holds a queued slot: take it first, so no worker claims
                // it while we write the outcome.
                match self.state.compare_exchange(
                    s,
                    (s & WAITER) | RUNNING | (MAX_WORKER_INDEX << WORKER_SHIFT),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {}
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            // SAFETY: the slot is RUNNING for a holder that cannot write (reaped,
            // or the placeholder we just installed); parents read only after DONE.
            let mut held = unsafe { self.held() };
            let desc = held.desc();
            desc.outcome = outcome as u32;
            desc.detail = detail;
            desc.signal = signal;
            held.finish();
            return true;
        }
    }

    /// RUNNING(k) → QUEUED, so the task runs again. Supervisor only, after
    /// reaping worker k. Returns `false` if the slot was not RUNNING(k).
    pub(crate) fn requeue(&self, worker: u32) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if decode(s) != (SlotState::Running { worker }) {
                return false;
            }
            match self.state.compare_exchange(
                s,
                (s & WAITER) | QUEUED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// QUEUED → FREE: withdraws a task no worker has claimed. Parent only.
    pub(crate) fn cancel(&self) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        while s & STATE_MASK == QUEUED {
            match self
                .state
                .compare_exchange(s, FREE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if s & WAITER != 0 {
                        futex::wake(&self.state, i32::MAX);
                    }
                    return true;
                }
                Err(now) => s = now,
            }
        }
        false
    }

    /// DONE → FREE, once the parent has read the outcome.
    pub(crate) fn release(&self) {
        debug_assert_eq!(self.state(), SlotState::Done);
        self.state.store(FREE, Ordering::Release);
    }

    /// Whether the task has finished (Acquire: the outcome is then readable).
    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) & STATE_MASK == DONE
    }

    /// The outcome (`Err` with the word if it names none), `detail` and
    /// `signal`, as found: a worker may have written anything there, so the
    /// caller checks them before use. Only after [`TaskSlot::is_done`]
    /// returned `true`.
    pub(crate) fn outcome(&self) -> (Result<Outcome, u32>, u32, i32) {
        let (desc, _) = self.done_parts();
        (Outcome::from_u32(desc.outcome), desc.detail, desc.signal)
    }

    /// The first `len` inline bytes of a finished slot (a panic message),
    /// `None` if the slot holds fewer. Only after [`TaskSlot::is_done`]
    /// returned `true`.
    pub(crate) fn message(&self, len: usize) -> Option<&[u8]> {
        self.done_parts().1.get(..len)
    }

    /// The description and inline bytes of a finished slot, to read.
    fn done_parts(&self) -> (&TaskDesc, &[u8; INLINE_CAPACITY]) {
        debug_assert!(self.is_done());
        // SAFETY: DONE was observed with Acquire (the callers' contract);
        // nobody writes a DONE slot until the parent releases it.
        unsafe { (&*self.desc.get(), &*self.inline.get()) }
    }

    /// Waits until DONE or `deadline`; returns whether the task is done. Spins
    /// a bounded number of times, then sleeps on the state word.
    pub(crate) fn wait_done(&self, deadline: Option<Instant>) -> bool {
        self.wait_done_with(true, deadline)
    }

    /// [`wait_done`](Self::wait_done), choosing whether to spin first. Not
    /// spinning suits a wait expected to be long, during which a spinning
    /// parent would only take a CPU from the workers.
    pub(crate) fn wait_done_with(&self, spin_first: bool, deadline: Option<Instant>) -> bool {
        futex::wait_until(
            &self.state,
            WAITER,
            spin_first,
            deadline,
            |s| s & STATE_MASK == DONE,
            // Cancelled or released under us: nothing will ever finish it.
            |s| s & STATE_MASK == FREE,
        )
    }
}

/// Access to a slot's description and inline bytes, for the one the
/// protocol gives them to (module doc): got from [`TaskSlot::claim`] by the
/// worker that claimed the slot, or vouched for with [`TaskSlot::held`].
pub(crate) struct Held<'a> {
    slot: &'a TaskSlot,
}

impl Held<'_> {
    /// The task description.
    pub(crate) fn desc(&mut self) -> &mut TaskDesc {
        self.cells().0
    }

    /// The inline payload bytes.
    pub(crate) fn inline(&mut self) -> &mut [u8; INLINE_CAPACITY] {
        self.cells().1
    }

    /// Both of the slot's cells.
    fn cells(&mut self) -> (&mut TaskDesc, &mut [u8; INLINE_CAPACITY]) {
        // SAFETY: this token is the one access to the slot's cells that the
        // protocol allows now (how it was made), borrowed mutably.
        unsafe { (&mut *self.slot.desc.get(), &mut *self.slot.inline.get()) }
    }

    /// RUNNING → DONE by its holder, after writing the outcome.
    pub(crate) fn finish(self) {
        self.slot.finish();
    }
}

fn decode(s: u32) -> SlotState {
    match s & STATE_MASK {
        FREE => SlotState::Free,
        QUEUED => SlotState::Queued,
        RUNNING => SlotState::Running {
            worker: s >> WORKER_SHIFT,
        },
        _ => SlotState::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_happy_path() {
        let slot = TaskSlot::default();
        assert_eq!(slot.state(), SlotState::Free);
        slot.publish();
        let mut held = slot.claim(3).expect("a queued slot can be claimed");
        assert!(
            slot.claim(4).is_none(),
            "a claimed slot cannot be claimed again"
        );
        assert_eq!(slot.state(), SlotState::Running { worker: 3 });
        held.desc().outcome = Outcome::Returned as u32;
        held.finish();
        assert!(slot.wait_done(Some(Instant::now())));
        assert_eq!(slot.outcome().0, Ok(Outcome::Returned));
        slot.release();
        assert_eq!(slot.state(), SlotState::Free);
    }

    #[test]
    fn cancel_only_wins_before_a_claim() {
        let slot = TaskSlot::default();
        slot.publish();
        assert!(slot.cancel());
        assert!(slot.claim(0).is_none(), "a cancelled slot is not claimable");
        slot.publish();
        assert!(slot.claim(0).is_some());
        assert!(!slot.cancel());
    }

    #[test]
    fn a_dead_worker_slot_is_failed_or_requeued_but_never_twice() {
        let slot = TaskSlot::default();
        slot.publish();
        assert!(slot.claim(5).is_some());
        assert!(!slot.requeue(6), "only the dead worker's slot");
        assert!(slot.requeue(5));
        assert!(slot.claim(7).is_some());
        let running_on = |w| move |s| s == SlotState::Running { worker: w };
        assert!(!slot.finish_for(running_on(5), Outcome::WorkerDied, 42, 9));
        assert!(slot.finish_for(running_on(7), Outcome::WorkerDied, 42, 9));
        assert_eq!(slot.outcome(), (Ok(Outcome::WorkerDied), 42, 9));
    }

    #[test]
    fn terminate_fails_queued_slots_so_no_worker_can_claim_them() {
        let slot = TaskSlot::default();
        slot.publish();
        assert!(slot.finish_for(
            |s| s != SlotState::Done && s != SlotState::Free,
            Outcome::Terminated,
            0,
            -1
        ));
        assert!(slot.claim(0).is_none());
        assert_eq!(slot.outcome().0, Ok(Outcome::Terminated));
    }

    #[test]
    fn a_waiter_is_woken_by_finish() {
        let slot = TaskSlot::default();
        slot.publish();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| slot.wait_done(Some(Instant::now() + Duration::from_secs(20))));
            assert!(slot.claim(1).is_some());
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 30 }));
            slot.finish();
            assert!(waiter.join().unwrap());
        });
    }

    #[test]
    fn wait_times_out_on_a_running_slot() {
        let slot = TaskSlot::default();
        slot.publish();
        assert!(slot.claim(1).is_some());
        assert!(!slot.wait_done(Some(Instant::now() + Duration::from_millis(5))));
    }
}
