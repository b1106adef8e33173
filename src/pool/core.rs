//! The state a pool shares between its handle, its results and its supervisor:
//! the segment, the parent-side allocators, the ring's producer lock.
//!
//! Parent-private bookkeeping (which slots and arena ranges are in use) lives in
//! ordinary memory behind mutexes; workers only ever see offsets in slots.

// Unsafe code: the segment's layout, and results workers wrote there.
#![allow(unsafe_code)]

use crate::error::{Error, PanicMessage};
use crate::pool::builder::PoolConfig;
use crate::pool::callbacks::Callbacks;
use crate::pool::job::Job;
use crate::pool::supervisor::Supervisor;
use crate::pool::unpublished::UnpublishedSlot;
use crate::pool::zero_copy::{self, PtracerGrant};
use crate::remote::AccessRefused;
use crate::shm::arena::{Arena, Block};
use crate::shm::layout::{self, Layout};
use crate::shm::segment::Segment;
use crate::sync::lock;
use crate::sync::ring::{Full, Producer};
use crate::sync::slot::{Outcome, SlotState, INLINE_CAPACITY};
use crate::Pod;
use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Where a pool is in its life. It only moves forward (`Running` → `Closed`
/// → `Terminated`, or `Running` → `Terminated`): the order of the variants is
/// that of the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Lifecycle {
    /// The pool accepts work.
    Running = 0,
    /// `close()` was called: pending work finishes, nothing new is accepted.
    Closed = 1,
    /// `terminate()` was called (or the pool dropped): workers are killed.
    Terminated = 2,
}

impl Lifecycle {
    /// The state a word names; only [`LifecycleCell`] writes the word.
    fn from_u8(v: u8) -> Lifecycle {
        match v {
            0 => Lifecycle::Running,
            1 => Lifecycle::Closed,
            _ => Lifecycle::Terminated,
        }
    }

    /// The state's name, as `Pool`'s `Debug` shows it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Closed => "closed",
            Lifecycle::Terminated => "terminated",
        }
    }
}

/// A pool's [`Lifecycle`], shared by every thread that submits or stops work:
/// it can only be advanced.
#[derive(Debug)]
struct LifecycleCell(AtomicU8);

impl LifecycleCell {
    fn new() -> Self {
        LifecycleCell(AtomicU8::new(Lifecycle::Running as u8))
    }

    fn get(&self) -> Lifecycle {
        Lifecycle::from_u8(self.0.load(Ordering::SeqCst))
    }

    /// Moves to `to` unless the state is already as far; returns the state
    /// before.
    fn advance(&self, to: Lifecycle) -> Lifecycle {
        Lifecycle::from_u8(self.0.fetch_max(to as u8, Ordering::SeqCst))
    }
}

/// How much of the arena's start keeps its memory when blocks there are
/// freed; freed blocks beyond it give theirs back to the kernel.
pub(crate) const RETAINED_ARENA_BYTES: usize = 64 << 20;

/// Shared state of one pool.
pub(crate) struct Core {
    layout: Layout,
    pub(crate) processes: usize,
    pub(crate) config: PoolConfig,
    lifecycle: LifecycleCell,
    /// Set once if the supervisor thread died: why every call now fails.
    broken: OnceLock<String>,
    slots: Mutex<SlotTable>,
    producer: Mutex<Producer>,
    arena: Mutex<Arena>,
    pub(crate) supervisor: Supervisor,
    /// The thread that runs `*_with` callbacks (started on first use).
    pub(crate) callbacks: Callbacks,
    /// The live workers' pids by index, kept by the supervisor.
    pub(crate) pids: Mutex<Vec<Option<u32>>>,
    /// The parent's side of `Pool::stats`.
    pub(crate) stats: crate::pool::stats::StatsBook,
    /// Whether maps may hand workers the caller's memory (`pool::zero_copy`):
    /// set at start if configured, cleared for good on a refusal.
    zero_copy: AtomicBool,
    /// Held while this pool may use zero-copy maps.
    ptracer: Mutex<Option<PtracerGrant>>,
    /// A worker could not reach the shared heap (`SharedAlloc`): this pool's
    /// maps stop handing it out.
    pub(crate) heap_refused: AtomicBool,
    // Declared last: dropped (unmapped) after everything that points into it.
    _segment: Segment,
}

/// Which slots the parent has handed out.
#[derive(Debug, Default)]
struct SlotTable {
    free: Vec<u32>,
    /// Slots `[0, high_water)` have been used at least once.
    high_water: u32,
    /// Slots whose handle was dropped while a worker still ran the task, with
    /// the block to free once all of them are done.
    orphans: Vec<(Vec<u32>, Option<Block>)>,
    /// Reap orphans once there are this many (doubles with survivors).
    reap_at: usize,
}

impl Core {
    /// Maps a fresh segment for a pool configured by `config` (its workers are
    /// not started yet); `config.processes` is set.
    pub(crate) fn new(config: PoolConfig) -> Result<Core, Error> {
        let has_initializer = config.initializer.is_some();
        let processes = config.processes.expect("set by build");
        let segment = Segment::create("shmpool", layout::SEGMENT_BYTES)?;
        // SAFETY: the segment is SEGMENT_BYTES long, page-aligned (mmap), and
        // outlives `layout` (both live in `Core`, segment dropped last).
        let layout = unsafe { Layout::new(segment.base()) };
        let header = layout.header();
        let settings = &header.settings;
        settings
            .max_tasks
            .store(config.max_tasks.unwrap_or(0), Ordering::Relaxed);
        settings
            .track_tasks
            .store(config.task_timeout.is_some() as u32, Ordering::Relaxed);
        settings
            .stack_size
            .store(config.stack_size.unwrap_or(0) as u64, Ordering::Relaxed);
        if let Some(init) = &config.initializer {
            // SAFETY: no worker exists yet, so nothing else reads `init_args`;
            // both sides are 64-aligned arrays of INIT_ARGS_BYTES bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    init.args.0.as_ptr(),
                    settings.init_args.0.get().cast(),
                    layout::INIT_ARGS_BYTES,
                )
            };
            settings.init_entry.store(init.entry.0, Ordering::Relaxed);
            settings.init_set.store(1, Ordering::Relaxed);
        }
        // Also where workers find the parent's shared heap (`SharedAlloc`).
        settings
            .parent_pid
            .store(std::process::id(), Ordering::Relaxed);
        let ptracer = config.zero_copy.then(|| {
            settings
                .parent_pid
                .store(std::process::id(), Ordering::Relaxed);
            settings
                .probe_target
                .store(zero_copy::probe_target(), Ordering::Relaxed);
            settings.zero_copy.store(1, Ordering::Relaxed);
            PtracerGrant::acquire()
        });
        config.harness.write_settings(&layout);
        header.magic.store(layout::MAGIC, Ordering::Release);
        Ok(Core {
            layout,
            processes,
            config,
            lifecycle: LifecycleCell::new(),
            broken: OnceLock::new(),
            slots: Mutex::new(SlotTable {
                reap_at: 64,
                ..SlotTable::default()
            }),
            producer: Mutex::new(Producer::default()),
            arena: Mutex::new(Arena::new(layout::ARENA_BYTES)),
            supervisor: Supervisor::new()?,
            callbacks: Callbacks::default(),
            pids: Mutex::new(vec![None; processes]),
            stats: crate::pool::stats::StatsBook::new(processes, has_initializer),
            zero_copy: AtomicBool::new(ptracer.is_some()),
            ptracer: Mutex::new(ptracer),
            heap_refused: AtomicBool::new(false),
            _segment: segment,
        })
    }

    /// The segment's memfd, for workers that must map it themselves.
    pub(crate) fn segment_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self._segment.fd()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.get()
    }

    /// Moves the pool on to `to` (never back); returns the previous state.
    pub(crate) fn advance_lifecycle(&self, to: Lifecycle) -> Lifecycle {
        let prev = self.lifecycle.advance(to);
        fence(Ordering::SeqCst);
        prev
    }

    /// `Err(Closed)` (or `Err(PoolBroken)`) unless the pool accepts work.
    pub(crate) fn ensure_running(&self) -> Result<(), Error> {
        if self.lifecycle() == Lifecycle::Running {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    /// Whether workers may reach the caller's memory: configured, and no
    /// worker has found the kernel refusing it.
    pub(crate) fn zero_copy(&self) -> bool {
        self.zero_copy.load(Ordering::Relaxed)
            && self
                .layout
                .header()
                .zero_copy_refused
                .load(Ordering::Relaxed)
                == 0
    }

    /// Stops using zero-copy maps for good (a worker was refused), and gives
    /// back this pool's share of the widened ptrace access.
    pub(crate) fn disable_zero_copy(&self) {
        self.zero_copy.store(false, Ordering::Relaxed);
        lock(&self.ptracer).take();
    }

    /// Why the pool accepts no work: closed or terminated, or broken.
    pub(crate) fn stopped(&self) -> Error {
        match self.broken.get() {
            Some(why) => Error::PoolBroken(why.clone()),
            None => Error::Closed,
        }
    }

    /// Records that the supervisor died (`why`) and stops accepting work; the
    /// caller then fails every unfinished slot.
    pub(crate) fn mark_broken(&self, why: String) {
        let _ = self.broken.set(why);
        self.advance_lifecycle(Lifecycle::Terminated);
    }

    /// Why the supervisor died, if it did.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.get().map(String::as_str)
    }

    /// A free slot for a new task, as the token that alone may write it.
    pub(crate) fn alloc_slot(&self) -> Result<UnpublishedSlot<'_>, Error> {
        self.alloc_slot_index()
            .map(|index| UnpublishedSlot::new(self, index))
    }

    fn alloc_slot_index(&self) -> Result<u32, Error> {
        let mut table = lock(&self.slots);
        if let Some(i) = table.free.pop() {
            if let Some(&next) = table.free.last() {
                self.prefetch_slot(next);
            }
            return Ok(i);
        }
        if table.orphans.len() >= table.reap_at {
            self.reap_orphans(&mut table);
            if let Some(i) = table.free.pop() {
                return Ok(i);
            }
        }
        if (table.high_water as usize) < layout::SLOT_CAPACITY {
            table.high_water += 1;
            if (table.high_water as usize) < layout::SLOT_CAPACITY {
                self.prefetch_slot(table.high_water);
            }
            return Ok(table.high_water - 1);
        }
        self.reap_orphans(&mut table);
        table.free.pop().ok_or_else(|| {
            Error::full(format!(
                "more than {} tasks in flight; collect or drop some results first",
                layout::SLOT_CAPACITY
            ))
        })
    }

    /// Starts fetching the lines of the slot the next task will use, so that
    /// a stream of submissions does not wait on each slot's cache miss in
    /// turn.
    fn prefetch_slot(&self, index: u32) {
        self.layout.slot(index).prefetch();
    }

    fn reap_orphans(&self, table: &mut SlotTable) {
        let mut freed_blocks = Vec::new();
        let layout = self.layout;
        let SlotTable { free, orphans, .. } = table;
        orphans.retain(|(slots, block)| {
            if !slots.iter().all(|&i| layout.slot(i).is_done()) {
                return true;
            }
            for &i in slots {
                layout.slot(i).release();
                free.push(i);
            }
            freed_blocks.extend(*block);
            false
        });
        table.reap_at = (2 * table.orphans.len()).max(64);
        freed_blocks.into_iter().for_each(|b| self.free_block(b));
    }

    /// Returns a slot the parent no longer needs: it must be FREE or DONE.
    pub(crate) fn release_slot(&self, slot: u32) {
        let s = self.layout.slot(slot);
        if s.state() == SlotState::Done {
            s.release();
        }
        debug_assert_eq!(s.state(), SlotState::Free);
        lock(&self.slots).free.push(slot);
    }

    /// Ends a job whose results are read or will never be: chunks still queued
    /// are withdrawn, finished ones released; chunks a worker is running are
    /// kept aside with the block until they finish.
    pub(crate) fn dispose(&self, job: Job) {
        let mut running = Vec::new();
        for chunk in job.chunks() {
            let s = self.layout.slot(chunk.slot);
            if s.cancel() || s.is_done() {
                self.release_slot(chunk.slot);
            } else {
                running.push(chunk.slot);
            }
        }
        if running.is_empty() {
            if let Some(b) = job.block {
                self.free_block(b);
            }
        } else {
            lock(&self.slots).orphans.push((running, job.block));
        }
    }

    /// Publishes slot `slot` (its desc and input already written) and wakes a
    /// worker if one sleeps. If the pool was closed or terminated meanwhile and
    /// no worker took the task, withdraws it and returns `Err(Closed)`; the
    /// caller still owns (and frees) the slot then. Only
    /// `UnpublishedSlot::publish` calls it.
    pub(super) fn submit(&self, slot: u32) -> Result<(), Error> {
        self.layout.slot(slot).publish();
        // `push` ends with a SeqCst fence after the ring store (the wake word's
        // Dekker fence). It pairs with the fence in `close`/`terminate`: either
        // they see this slot queued (and run or fail it), or the load below
        // sees their lifecycle change.
        self.push(slot);
        if self.lifecycle() != Lifecycle::Running && self.layout.slot(slot).cancel() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Appends `slot` to the ring, waiting while the ring is full, then wakes a
    /// worker if one sleeps. Ends with a SeqCst fence (`submit` relies on it).
    pub(crate) fn push(&self, slot: u32) {
        let ring = self.layout.ring();
        let mut backoff = Duration::from_micros(50);
        let mut yields = 0;
        loop {
            // A statement of its own, so the lock is released before any wait.
            let pushed = ring.try_push(&mut lock(&self.producer), slot);
            match pushed {
                Ok(()) => break,
                // Killed workers drain nothing: the slot is failed by
                // `terminate_all` or withdrawn by `submit`.
                Err(Full) if self.lifecycle() == Lifecycle::Terminated => break,
                Err(Full) => {
                    // Workers drain the ring independently of the parent, so this
                    // ends unless every worker is stuck in a task. Yield first
                    // (a sleep costs ~60 µs however short), then back off.
                    self.layout.header().work.notify_all();
                    if yields < 100 {
                        yields += 1;
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(1));
                    }
                }
            }
        }
        // One fence serves the Dekker pairs with both kinds of idle worker: a
        // searching one (its bit; it will find this entry, or wake a sleeper
        // when it takes another and sees this one left), and a sleeping one.
        fence(Ordering::SeqCst);
        let header = self.layout.header();
        if header.searching.load(Ordering::Relaxed) == 0 {
            header.work.notify_one_fenced();
        }
    }

    /// `len` bytes of arena aligned to `align`, as a segment offset + block.
    pub(crate) fn alloc_block(&self, len: usize, align: usize) -> Result<Block, Error> {
        lock(&self.arena).alloc(len, align).ok_or_else(|| {
            Error::full(format!(
                "the pool's shared arena ({} GiB) has no room for {len} more bytes",
                layout::ARENA_BYTES >> 30
            ))
        })
    }

    /// [`alloc_block`](Self::alloc_block), its first bytes a copy of
    /// `prefix` (padding included): what the tasks will read, written before
    /// any of them can know of the block.
    pub(crate) fn alloc_block_from(
        &self,
        len: usize,
        align: usize,
        prefix: &[std::mem::MaybeUninit<u8>],
    ) -> Result<Block, Error> {
        assert!(prefix.len() <= len, "a block shorter than its contents");
        let block = self.alloc_block(len, align)?;
        let at = self.layout.at(Self::block_offset(block));
        // SAFETY: the fresh block holds `len` bytes, and no other thread or
        // worker knows of it yet.
        unsafe { std::ptr::copy_nonoverlapping(prefix.as_ptr(), at.cast(), prefix.len()) };
        Ok(block)
    }

    pub(crate) fn free_block(&self, block: Block) {
        self.give_back(block);
        lock(&self.arena).free(block);
    }

    /// Gives back the memory of the part of `block` (just finished with, not
    /// yet returned to the arena, so nobody else uses it) that lies beyond the
    /// first [`RETAINED_ARENA_BYTES`] of the arena: the arena allocates lowest
    /// first, so small and recent blocks stay warm there, while a large map
    /// does not hold its memory once done.
    fn give_back(&self, block: Block) {
        let end = block.offset + block.len;
        if end <= RETAINED_ARENA_BYTES {
            return;
        }
        let start = block.offset.max(RETAINED_ARENA_BYTES);
        self._segment
            .release(layout::ARENA_OFFSET + start, end - start);
    }

    /// The segment offset of an arena block.
    pub(crate) fn block_offset(block: Block) -> u64 {
        (layout::ARENA_OFFSET + block.offset) as u64
    }

    /// Reads the outcome of a DONE slot whose result of type `R` is at `output`.
    ///
    /// `output` is the parent's own record; what the slot says is not to be
    /// trusted, since anything running in a worker (the task, a C library,
    /// an `unsafe` bug) can write over it: an outcome no finisher writes, or
    /// a message longer than the inline area, is [`Failure::Corrupted`],
    /// never a read outside the slot.
    pub(crate) fn read_outcome<R: Pod>(&self, slot: u32, output: u64) -> Result<R, Failure> {
        let s = self.layout.slot(slot);
        let (outcome, detail, signal) = s.outcome();
        let outcome = outcome
            .map_err(|word| Failure::Corrupted(format!("its outcome word reads {word:#x}")))?;
        match outcome {
            // `output` and R's size are the parent's, so the read stays in the
            // block the parent reserved, whatever the slot says.
            // SAFETY: the worker wrote an R at `output` before finishing the
            // slot (DONE seen with Acquire by the caller); unaligned read.
            Outcome::Returned => Ok(unsafe { self.layout.at(output).cast::<R>().read_unaligned() }),
            Outcome::Panicked => {
                let len = detail as usize;
                if len > INLINE_CAPACITY {
                    return Err(Failure::Corrupted(format!(
                        "its panic message length reads {len}, more than the slot's \
                         {INLINE_CAPACITY} bytes"
                    )));
                }
                // The location's bytes come first, then the message's.
                let at = usize::try_from(signal).unwrap_or(usize::MAX);
                if at > len {
                    return Err(Failure::Corrupted(format!(
                        "its panic location length reads {signal}, more than the \
                         message's {len} bytes"
                    )));
                }
                // The inline area holds INLINE_CAPACITY bytes and `len` is no more.
                let bytes = s.message(len).unwrap_or_default();
                Err(Failure::Panicked(PanicMessage::from_wire(bytes, at)))
            }
            Outcome::WorkerDied => Err(Failure::WorkerDied {
                cause: self.stats.cause_of(detail),
                pid: detail,
                signal: (signal >= 0).then_some(signal),
            }),
            Outcome::Terminated => Err(match self.broken() {
                Some(why) => Failure::Broken(why.to_owned()),
                None => Failure::Terminated,
            }),
            Outcome::TimedOut => Err(Failure::TimedOut),
            Outcome::Aborted => Err(Failure::Aborted),
            Outcome::AccessRefused => Err(Failure::AccessRefused(AccessRefused {
                errno: detail as i32,
                wrote: signal != 0,
            })),
        }
    }

    /// Records worker `index`'s pid (`None` once it is gone). A new worker is
    /// also listed in the program's process table, so a queue reader knows a
    /// worker may still send; a reaped one is removed from it.
    pub(crate) fn set_pid(&self, index: usize, pid: Option<u32>) {
        let old = std::mem::replace(&mut lock(&self.pids)[index], pid);
        if let Some(heap) = crate::objects::Heap::existing() {
            if let Some(old) = old.filter(|&old| Some(old) != pid) {
                heap.unregister(old);
            }
            if let Some(pid) = pid {
                heap.register(pid);
            }
        }
    }

    /// Slots `[0, high_water)`: everything that may be in flight.
    pub(crate) fn slots_in_use(&self) -> u32 {
        lock(&self.slots).high_water
    }
}

/// Why a task produced no value; turned into an [`Error`] on each `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Panicked(PanicMessage),
    WorkerDied {
        pid: u32,
        signal: Option<i32>,
        cause: crate::error::DeathCause,
    },
    Terminated,
    Broken(String),
    TimedOut,
    AccessRefused(AccessRefused),
    /// The slot held values no finisher writes (what they were).
    Corrupted(String),
    /// Withdrawn or stopped by `AsyncResult::abort`.
    Aborted,
    /// A serde task's value did not decode (why).
    #[cfg(feature = "serde")]
    Decode(String),
    /// A serde task's results did not fit the room reserved for them.
    #[cfg(feature = "serde")]
    CapacityExceeded(String),
    /// A serde task's result could not be encoded (why).
    #[cfg(feature = "serde")]
    Unencodable(String),
    /// A worker's death, a timeout or a panic in a map chunk: the input
    /// elements the chunk covered.
    Covering {
        failure: Box<Failure>,
        elements: std::ops::Range<usize>,
    },
}

impl Failure {
    /// Names the map elements a dead, timed-out or panicked chunk covered.
    pub(crate) fn covering(self, elements: std::ops::Range<usize>) -> Failure {
        match self {
            Failure::WorkerDied { .. } | Failure::TimedOut | Failure::Panicked(_) => {
                Failure::Covering {
                    failure: Box::new(self),
                    elements,
                }
            }
            other => other,
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Panicked(message) => Error::TaskPanicked { message },
            Failure::WorkerDied { pid, signal, cause } => Error::WorkerDied {
                pid,
                signal,
                elements: None,
                cause,
            },
            Failure::Terminated => Error::Terminated,
            Failure::Broken(why) => Error::PoolBroken(why),
            Failure::TimedOut => Error::TaskTimedOut { elements: None },
            Failure::AccessRefused(refused) => Error::ZeroCopyRefused {
                errno: refused.errno,
            },
            Failure::Corrupted(what) => Error::SlotCorrupted(what),
            Failure::Covering { failure, elements } => Error::from(*failure).covering(elements),
            Failure::Aborted => Error::Aborted,
            #[cfg(feature = "serde")]
            Failure::Decode(why) => Error::Decode(why),
            #[cfg(feature = "serde")]
            Failure::CapacityExceeded(why) => Error::CapacityExceeded(why),
            #[cfg(feature = "serde")]
            Failure::Unencodable(why) => Error::InvalidArgument(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Lifecycle, LifecycleCell};

    #[test]
    fn the_lifecycle_only_moves_forward() {
        let cell = LifecycleCell::new();
        assert_eq!(cell.get(), Lifecycle::Running);
        assert_eq!(cell.advance(Lifecycle::Closed), Lifecycle::Running);
        assert_eq!(cell.advance(Lifecycle::Running), Lifecycle::Closed);
        assert_eq!(cell.get(), Lifecycle::Closed);
        assert_eq!(cell.advance(Lifecycle::Terminated), Lifecycle::Closed);
        assert_eq!(cell.advance(Lifecycle::Closed), Lifecycle::Terminated);
        assert_eq!(cell.get(), Lifecycle::Terminated);
        assert_eq!(cell.get().name(), "terminated");
    }
}
