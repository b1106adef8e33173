//! Where everything sits in a pool's segment. Every offset is from the base;
//! all-zero bytes are the valid initial state of every region.
//!
//! ```text
//! 0                 PoolHeader (one page): flags, the work wake word, ring positions
//! RING_OFFSET       ring entries: RING_CAPACITY × u64
//! WORKERS_OFFSET    worker records: MAX_PROCESSES × 128 B (what each worker runs; its counters)
//! LOGS_OFFSET       finish logs:    MAX_PROCESSES × 4224 B (which slots each worker finished)
//! PINS_OFFSET       CPU sets:       MAX_PROCESSES × 128 B (where each worker may run)
//! SLOTS_OFFSET      task slots:   SLOT_CAPACITY × 256 B   (sparse: touched as used)
//! ARENA_OFFSET      payload arena for map chunks and large arguments (sparse)
//! ```

// Unsafe code: the segment's layout over its mapping; RDTSC.
#![allow(unsafe_code)]

use crate::shm::region::{Region, Shared};
use crate::sync::finish_log::FinishLog;
use crate::sync::ring::{Ring, RingHeader};
use crate::sync::slot::TaskSlot;
use crate::sync::wake::WakeWord;
use crossbeam_utils::CachePadded;
use rustix::time::ClockId;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Entries in the work ring: how many tasks may wait unclaimed at once.
/// Enough that 100,000s of queued `apply_async` tasks never fill it; the
/// region is sparse, so unused entries cost nothing.
pub(crate) const RING_CAPACITY: usize = 1 << 20;
/// Task slots: how many tasks may be in flight (queued, running or uncollected).
pub(crate) const SLOT_CAPACITY: usize = 1 << 22;
/// Bytes reserved for payloads (virtual; pages are allocated when touched).
pub(crate) const ARENA_BYTES: usize = 64 << 30;

pub(crate) const PAGE: usize = 4096;
pub(crate) const RING_OFFSET: usize = PAGE;
/// The most worker processes one pool may have.
pub(crate) const MAX_PROCESSES: usize = 1 << 16;
pub(crate) const WORKERS_OFFSET: usize = RING_OFFSET + RING_CAPACITY * 8;
pub(crate) const LOGS_OFFSET: usize =
    WORKERS_OFFSET + MAX_PROCESSES * std::mem::size_of::<WorkerRecord>();
pub(crate) const PINS_OFFSET: usize =
    LOGS_OFFSET + MAX_PROCESSES * std::mem::size_of::<FinishLog>();
pub(crate) const SLOTS_OFFSET: usize = PINS_OFFSET + MAX_PROCESSES * std::mem::size_of::<CpuPin>();
pub(crate) const ARENA_OFFSET: usize =
    SLOTS_OFFSET + SLOT_CAPACITY * std::mem::size_of::<TaskSlot>();
/// The whole segment.
pub(crate) const SEGMENT_BYTES: usize = ARENA_OFFSET + ARENA_BYTES;

const _: () = assert!(std::mem::size_of::<PoolHeader>() <= PAGE);
const _: () = assert!(SLOTS_OFFSET % PAGE == 0 && ARENA_OFFSET % PAGE == 0);
const _: () = assert!(std::mem::size_of::<WorkerRecord>() == 128);
const _: () = assert!(std::mem::size_of::<CpuPin>() == 128);

/// What worker k is doing, for the supervisor: written only by worker k (one
/// cache line each, so workers do not share lines), read by the supervisor
/// (timeouts while k lives; everything once k is reaped).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct WorkerRecord {
    /// `started_ms << 24 | (slot + 1)`, or 0 when idle: one word, so the
    /// supervisor never pairs one task's slot with another task's start time.
    /// Kept only with a task timeout.
    running: AtomicU64,
    /// `slot + 1` of the last ring entry the worker took or was about to take
    /// (written before the pop's CAS), or 0. The only slot a dead worker can
    /// hold: it takes one entry at a time and runs it before the next. So
    /// the supervisor settles a death by looking at this one slot.
    taking: AtomicU64,
    /// [`ticks`] when the worker claimed its current (or last) task. The
    /// supervisor reads it only for a worker reaped holding a slot, whose
    /// task never finished (killed by the timeout, or dead): that task's
    /// time counts as work (`Pool::stats`). Next to `taking`, which the
    /// worker writes for every task too: no extra cache line.
    task_began: AtomicU64,
    /// Set (non-zero) by the worker's SIGABRT handler when it aborts with
    /// `errno` ENOMEM under the pool's `memory_limit_per_worker`: an
    /// allocation failed. Read by the supervisor once the worker is reaped,
    /// to say why it died (only to say so). Reset with the counters.
    pub(crate) over_limit: AtomicU64,
    /// What the worker counts for `Pool::stats`, on a cache line of its own
    /// so the supervisor's reads of the words above do not share it.
    pub(crate) counters: WorkerCounters,
}

/// Figures a worker keeps about itself for `Pool::stats`: written by the
/// worker alone with relaxed stores, read by the parent for display only (a
/// worker's task can write anything here, so readers saturate and never use
/// them for decisions). Instants are nanoseconds of CLOCK_MONOTONIC; task
/// durations are in [`ticks`].
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    /// When the worker loop began (0: not yet).
    pub(crate) serving_since: AtomicU64,
    /// How long the initializer took.
    pub(crate) initializer: AtomicU64,
    /// When the worker reported ready (0: not yet).
    pub(crate) ready_at: AtomicU64,
    /// Tasks finished (returned or panicked).
    pub(crate) tasks_done: AtomicU64,
    /// Time spent running tasks, in [`ticks`].
    pub(crate) busy: AtomicU64,
    /// The longest task's duration, in [`ticks`].
    pub(crate) slowest: AtomicU64,
    /// The anonymous memory the worker gained since it was ready, in KiB,
    /// measured after its last task (only under `max_memory_per_worker`).
    pub(crate) rss_kib: AtomicU64,
    /// Non-zero once the worker exits to be replaced, its resident set
    /// over the pool's `max_memory_per_worker`.
    pub(crate) over_memory: AtomicU64,
}

impl WorkerCounters {
    /// Supervisor side, the worker reaped: adds a task that ran `took` ticks
    /// and never finished to its time working (and its slowest task), not
    /// to its tasks done.
    pub(crate) fn count_unfinished(&self, took: u64) {
        let busy = self.busy.load(Ordering::Relaxed);
        self.busy
            .store(busy.saturating_add(took), Ordering::Relaxed);
        if took > self.slowest.load(Ordering::Relaxed) {
            self.slowest.store(took, Ordering::Relaxed);
        }
    }

    /// Supervisor side: zeroes the counters for the index's next worker.
    pub(crate) fn reset(&self) {
        for word in [
            &self.serving_since,
            &self.initializer,
            &self.ready_at,
            &self.tasks_done,
            &self.busy,
            &self.slowest,
            &self.rss_kib,
            &self.over_memory,
        ] {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// The CPUs worker k may run on (bit c: CPU c, as in `cpu_set_t`); all zero:
/// not pinned. Written by the parent before the first worker starts, read
/// by every worker at that index when it starts.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct CpuPin {
    pub(crate) words: [AtomicU64; 16],
}

/// The most CPUs a [`CpuPin`] names (that of a `cpu_set_t`).
pub(crate) const PIN_CPUS: usize = 16 * 64;

/// A retired worker's record (no slot index can make this value).
const RETIRED: u64 = u64::MAX;
/// Bits of [`WorkerRecord`] holding `slot + 1`.
const RECORD_SLOT_BITS: u32 = 24;
const _: () = assert!(SLOT_CAPACITY < (1 << RECORD_SLOT_BITS));

impl WorkerRecord {
    /// Worker side: now running `slot`, since `now_ms` (CLOCK_MONOTONIC).
    pub(crate) fn start(&self, slot: u32, now_ms: u64) {
        self.running.store(
            (now_ms << RECORD_SLOT_BITS) | (slot as u64 + 1),
            Ordering::Release,
        );
    }

    /// Worker side: the task is finished. Supervisor side: reset for a new
    /// worker at this index.
    pub(crate) fn idle(&self) {
        self.running.store(0, Ordering::Release);
    }

    /// Worker side, just before it exits for `maxtasksperchild`: it holds no
    /// slot and no popped ring entry, so the supervisor need not scan.
    pub(crate) fn retire(&self) {
        self.running.store(RETIRED, Ordering::Release);
    }

    /// Worker side: about to take ring entry `slot` (before the pop's CAS).
    pub(crate) fn note_taking(&self, slot: u32) {
        self.taking.store(u64::from(slot) + 1, Ordering::Relaxed);
    }

    /// Worker side: claimed a task at `ticks` (one relaxed store).
    pub(crate) fn note_began(&self, ticks: u64) {
        self.task_began.store(ticks, Ordering::Relaxed);
    }

    /// Supervisor side, after reaping the worker: when its last task began,
    /// in [`ticks`] (0: none). Resets the word for the index's next worker.
    pub(crate) fn take_task_began(&self) -> u64 {
        self.task_began.swap(0, Ordering::Relaxed)
    }

    /// Supervisor side, after reaping the worker: the slot it last took or
    /// was about to take. Resets the word for the index's next worker.
    pub(crate) fn take_last_taken(&self) -> Option<u32> {
        match self.taking.swap(0, Ordering::Acquire) {
            0 => None,
            v => Some((v - 1) as u32),
        }
    }

    /// Supervisor side: whether the worker exited through [`retire`](Self::retire).
    pub(crate) fn is_retired(&self) -> bool {
        self.running.load(Ordering::Acquire) == RETIRED
    }

    /// Supervisor side: `(slot, started_ms)` of the running task, if any.
    pub(crate) fn running(&self) -> Option<(u32, u64)> {
        let v = self.running.load(Ordering::Acquire);
        if v == RETIRED {
            return None;
        }
        let slot = v & ((1 << RECORD_SLOT_BITS) - 1);
        (slot != 0).then(|| ((slot - 1) as u32, v >> RECORD_SLOT_BITS))
    }
}

/// Worker `index`'s bit in [`PoolHeader::searching`]; 0 (never counted as
/// searching, so producers wake sleepers for it as usual) from index 64 on.
pub(crate) fn searching_bit(index: u32) -> u64 {
    1u64.checked_shl(index).unwrap_or(0)
}

/// Nanoseconds of CLOCK_MONOTONIC (the vDSO: no system call).
pub(crate) fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(ClockId::Monotonic);
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A cheap tick count for timing tasks (`Pool::stats`): the CPU's time-stamp
/// counter, one instruction instead of a vDSO call (~6 against ~25 ns).
/// Constant-rate and synchronized across CPUs on the machines Linux itself
/// clocks with it; the parent converts ticks to time with a rate it measures
/// against CLOCK_MONOTONIC (`pool::stats`). Figures are for display only.
#[cfg(target_arch = "x86_64")]
pub(crate) fn ticks() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Elsewhere, nanoseconds of CLOCK_MONOTONIC.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn ticks() -> u64 {
    monotonic_ns()
}

/// Milliseconds of CLOCK_MONOTONIC: one clock for every process of the pool.
pub(crate) fn monotonic_ms() -> u64 {
    let ts = rustix::time::clock_gettime(ClockId::Monotonic);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Marks a segment laid out by this version of the crate.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmpool1");

/// The first page of the segment.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct PoolHeader {
    /// [`MAGIC`], written by the parent before any worker starts.
    pub(crate) magic: AtomicU64,
    /// Non-zero once the pool is closed: workers exit when the ring is empty.
    pub(crate) closing: AtomicU32,
    /// Idle workers sleep here; a push wakes one (unless a worker is
    /// searching), close wakes all.
    pub(crate) work: CachePadded<WakeWord>,
    /// Bit k set while worker k (k < 64) spins looking for work: a producer
    /// that sees any bit set need not wake a sleeper (see [`searching_bit`]).
    pub(crate) searching: CachePadded<AtomicU64>,
    /// Parent threads waiting for *any* task to finish sleep here (unordered
    /// `imap`, the callback thread); whoever finishes a slot notifies it.
    pub(crate) done: CachePadded<WakeWord>,
    /// Head and tail of the work ring.
    pub(crate) ring: RingHeader,
    /// The errno of the first worker whose start-up probe found the kernel
    /// refusing it the parent's memory (0: none did). Written by workers; the
    /// parent only compares it with 0.
    pub(crate) zero_copy_refused: AtomicU32,
    /// Per-worker settings written by the parent before any worker starts.
    pub(crate) settings: WorkerSettings,
}

/// What a worker reads once at start: its task quota and its initializer.
/// Written by the parent before the first worker starts; read-only afterwards.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct WorkerSettings {
    /// Tasks a worker runs before it exits to be replaced; 0 = no limit.
    pub(crate) max_tasks: AtomicU64,
    /// Non-zero if workers must keep their [`WorkerRecord`] (per-task timeout).
    pub(crate) track_tasks: AtomicU32,
    /// Non-zero if the pool has an initializer.
    pub(crate) init_set: AtomicU32,
    /// The initializer's entry point (a `task::EntryPoint`).
    pub(crate) init_entry: AtomicU64,
    /// The initializer's arguments, as bytes (aligned to 64).
    pub(crate) init_args: InitArgs,
    /// Set (0 → 1) by the first worker whose initializer failed; it then
    /// writes `init_message` and exits with [`INIT_FAILED_EXIT`].
    pub(crate) init_failed: AtomicU32,
    /// Length of the message in `init_message`.
    pub(crate) init_message_len: AtomicU32,
    /// The failed initializer's panic message (UTF-8, truncated); written only
    /// by the worker that won `init_failed`, read by the parent after reaping
    /// it. Atomic bytes: a worker that breaks the rule garbles the message,
    /// nothing worse.
    init_message: [AtomicU8; INIT_MESSAGE_BYTES],
    /// Non-zero if workers may be handed the parent's memory (zero-copy maps):
    /// each then probes it at start (`remote::probe`).
    pub(crate) zero_copy: AtomicU32,
    /// The parent's pid, for `process_vm_readv`/`writev`.
    pub(crate) parent_pid: AtomicU32,
    /// The address of the parent's probe word.
    pub(crate) probe_target: AtomicU64,
    /// The thread count a worker sets for BLAS, OpenMP and rayon (the
    /// variables of `worker::setup`), unless already set; 0: none.
    pub(crate) threads_per_worker: AtomicU32,
    /// Non-zero if worker k pins itself to the CPU set at `PINS_OFFSET`.
    pub(crate) pinned: AtomicU32,
    /// `RLIMIT_AS` a worker sets on itself, in bytes; 0: none.
    pub(crate) memory_limit: AtomicU64,
    /// A worker whose resident set passes this many KiB after a task exits
    /// (to be replaced); 0: no cap.
    pub(crate) max_rss_kib: AtomicU64,
    /// `PoolBuilder::stack_size` in bytes (0: not set), for workers that do
    /// not run on a copy of the supervisor's stack (spawn, forkserver).
    pub(crate) stack_size: AtomicU64,
}

impl WorkerSettings {
    /// Writes the failed initializer's message (truncated to
    /// [`INIT_MESSAGE_BYTES`]), then publishes its length. Only the worker
    /// that won `init_failed` calls it.
    pub(crate) fn set_init_message(&self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(INIT_MESSAGE_BYTES)];
        for (to, &from) in self.init_message.iter().zip(bytes) {
            to.store(from, Ordering::Relaxed);
        }
        self.init_message_len
            .store(bytes.len() as u32, Ordering::Release);
    }

    /// The failed initializer's message, as far as it was written (its
    /// length is checked, never trusted).
    pub(crate) fn init_message(&self) -> Vec<u8> {
        let len = self.init_message_len.load(Ordering::Acquire) as usize;
        self.init_message[..len.min(INIT_MESSAGE_BYTES)]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// Initializer argument bytes: written by the parent before any worker
/// starts, read-only afterwards.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct InitArgs(pub(crate) UnsafeCell<[u8; INIT_ARGS_BYTES]>);

/// Room for an initializer's argument tuple.
pub(crate) const INIT_ARGS_BYTES: usize = 128;
/// Room for an initializer's panic message.
pub(crate) const INIT_MESSAGE_BYTES: usize = 512;
/// The exit status of a worker whose initializer panicked.
pub(crate) const INIT_FAILED_EXIT: i32 = 70;

// SAFETY: this and the four impls below: each is `repr(C)`, made of atomic
// and plain integers (any bytes are a valid value) and of `UnsafeCell`s
// under its protocol (the slot protocol, `sync::slot`; the finish log's one
// producer and one consumer, `sync::finish_log`; the header's settings,
// written before any worker starts); all-zero is a fresh segment's state.
unsafe impl Shared for PoolHeader {}
// SAFETY: as above (atomics only).
unsafe impl Shared for WorkerRecord {}
// SAFETY: as above (atomics only).
unsafe impl Shared for CpuPin {}
// SAFETY: as above (one producer, one consumer).
unsafe impl Shared for FinishLog {}
// SAFETY: as above (the slot protocol).
unsafe impl Shared for TaskSlot {}

/// Typed views of a segment laid out as above.
///
/// # Safety
/// `base` must point at a live mapping of at least [`SEGMENT_BYTES`] bytes,
/// aligned to a page, for as long as the returned references are used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    region: Region,
}

impl Layout {
    /// # Safety
    /// See the type's contract.
    /// The layout of a segment mapped for the rest of the process
    /// ([`Segment::map`](crate::shm::segment::Segment::map)); `None` if the
    /// region is too small to be one.
    pub(crate) fn of(region: Region) -> Option<Layout> {
        (region.len() >= SEGMENT_BYTES).then_some(Layout { region })
    }

    pub(crate) unsafe fn new(base: *mut u8) -> Layout {
        // SAFETY: the type's contract is the region's.
        let region = unsafe { Region::new(base, SEGMENT_BYTES) };
        Layout { region }
    }

    /// The header page.
    pub(crate) fn header(&self) -> &PoolHeader {
        self.region.view(0)
    }

    /// The work ring.
    pub(crate) fn ring(&self) -> Ring<'_> {
        let entries = self.region.slice::<AtomicU64>(RING_OFFSET, RING_CAPACITY);
        Ring::new(&self.header().ring, entries)
    }

    /// Worker `index`'s record (< [`MAX_PROCESSES`]).
    pub(crate) fn worker_record(&self, index: u32) -> &WorkerRecord {
        &self.region.slice(WORKERS_OFFSET, MAX_PROCESSES)[index as usize]
    }

    /// Worker `index`'s CPU set (< [`MAX_PROCESSES`]).
    pub(crate) fn cpu_pin(&self, index: u32) -> &CpuPin {
        &self.region.slice(PINS_OFFSET, MAX_PROCESSES)[index as usize]
    }

    /// Worker `index`'s finish log (< [`MAX_PROCESSES`]).
    pub(crate) fn finish_log(&self, index: u32) -> &FinishLog {
        &self.region.slice(LOGS_OFFSET, MAX_PROCESSES)[index as usize]
    }

    /// Task slot `index` (< [`SLOT_CAPACITY`]).
    pub(crate) fn slot(&self, index: u32) -> &TaskSlot {
        &self.region.slice(SLOTS_OFFSET, SLOT_CAPACITY)[index as usize]
    }

    /// The segment offset of slot `index`'s inline payload.
    pub(crate) fn inline_offset(&self, index: u32) -> u64 {
        (SLOTS_OFFSET + index as usize * std::mem::size_of::<TaskSlot>() + 64) as u64
    }

    /// A pointer to the byte at segment `offset`.
    pub(crate) fn at(&self, offset: u64) -> *mut u8 {
        debug_assert!((offset as usize) <= SEGMENT_BYTES);
        // Offsets handed out by this crate lie inside the mapping, so no
        // wrap happens; dereferencing is the caller's business.
        self.region.base().wrapping_add(offset as usize)
    }

    /// The segment offset of `[ptr, ptr + bytes)` if it lies wholly inside
    /// the segment.
    pub(crate) fn offset_of(&self, ptr: *const u8, bytes: usize) -> Option<u64> {
        let offset = (ptr as usize).checked_sub(self.region.base() as usize)?;
        (offset.checked_add(bytes)? <= SEGMENT_BYTES).then_some(offset as u64)
    }

    /// Whether the pool was closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.header().closing.load(Ordering::SeqCst) != 0
    }
}
