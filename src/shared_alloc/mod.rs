//! [`SharedAlloc`]: an opt-in global allocator that puts large allocations in
//! memory a pool's workers already reach, so a map over a big `Vec` copies
//! nothing, and the map's result vector is written by the workers directly.
//!
//! The heap is one `memfd` region, mapped `MAP_SHARED` in the process that
//! made it (its owner). A `fork` child (through libc, so its `atfork` handlers
//! run) remaps the region `MAP_PRIVATE` at the same address, so its writes to
//! inherited objects stay its own; a worker that is handed a chunk in the
//! heap maps the region a second time, `MAP_SHARED`, at another address, and
//! reads and writes the chunk there. The cross-process invariants are in
//! `docs/ARCHITECTURE.md`, "The shared heap". All of the heap's own `unsafe`
//! is in this file (its shared mappings are `shm::segment::Mapping`s, its
//! page advice `sys::vm::advise`); `books` is its bookkeeping in plain
//! arithmetic.

// Unsafe code: a global allocator over a memfd heap.
#![allow(unsafe_code)]

mod books;

use crate::shm::segment::Mapping;
use books::{align_up, Books, PAGE};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags};
use rustix::mm::{Advice, MapFlags, ProtFlags};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// A global allocator that puts allocations of [`SharedAlloc::THRESHOLD`]
/// bytes or more in shared memory, so that a pool's workers read a big input
/// and write a big output where it lies (no copy through the kernel), while
/// smaller ones go to [`System`] after a single size comparison.
///
/// Install it once per program:
///
/// ```
/// #[global_allocator]
/// static ALLOC: shmpool::SharedAlloc = shmpool::SharedAlloc::new();
///
/// fn sq(x: f64) -> f64 { x * x }
///
/// fn main() -> Result<(), shmpool::Error> {
///     let pool = shmpool::Pool::new(2)?;
///     let v: Vec<f64> = (0..1_000_000).map(f64::from).collect(); // 8 MB: shared
///     assert!(shmpool::SharedAlloc::contains(v.as_ptr().cast()));
///     let squares = pool.map(sq, &v)?; // workers write `squares` in place
///     assert_eq!(squares[1000], 1e6);
///     Ok(())
/// }
/// ```
///
/// What it keeps and what it changes:
///
/// * **`fork`'s copy-on-write promise**, one way: a `fork` child (a worker
///   started with [`StartMethod::Fork`](crate::StartMethod::Fork), a
///   [`Process`](crate::Process), a task's own `fork()`) that writes an
///   inherited large object changes only its own copy. The other way differs
///   from plain `fork`: until a child writes a page of a large object, it sees
///   the parent's *later* writes to that page too, and a large object the
///   parent frees reads as zeros (or as a newer object) in the child. A child
///   must not rely on a snapshot of large objects the parent goes on
///   changing.
/// * **Every start method.** Fork workers use the descriptor they inherit;
///   spawn and forkserver workers open the parent's heap through
///   `/proc/<parent>/fd` (same user, no exec). Where a worker cannot, the
///   chunk is redone through the pool's other paths and that pool's later
///   maps stop handing out the heap.
/// * **Memory goes back to the system.** A freed block is kept resident for
///   reuse while the freed blocks kept total at most
///   [`DEFAULT_RETAIN`](SharedAlloc::DEFAULT_RETAIN) bytes (see
///   [`with_retain`](SharedAlloc::with_retain)); beyond that, and on
///   [`trim`](SharedAlloc::trim), its pages are released (a hole punched in
///   the `memfd`).
/// * **Only the process that made the heap allocates in it.** In a `fork`
///   child, large allocations go to [`System`]; maps made there copy as
///   without this allocator.
/// * **Limits.** The heap reserves up to 1 TiB of address space (less if
///   `RLIMIT_AS` refuses it); once full, or if it cannot be made (no `memfd`,
///   or `vm.overcommit_memory = 2`), large allocations go to [`System`]. Each
///   worker maps the whole heap once more, so workers under an address-space
///   cap ([`PoolBuilder::memory_limit_per_worker`](crate::PoolBuilder::memory_limit_per_worker))
///   cannot, and maps copy instead. A
///   child forked without libc's `fork()` (a raw `clone`) shares the heap
///   writable with its parent.
pub struct SharedAlloc {
    retain: usize,
}

impl SharedAlloc {
    /// Allocations of at least this many bytes go to the shared heap.
    pub const THRESHOLD: usize = 256 << 10;

    /// How many freed bytes the heap keeps resident for reuse, by default.
    pub const DEFAULT_RETAIN: usize = 256 << 20;

    /// The allocator, keeping [`DEFAULT_RETAIN`](Self::DEFAULT_RETAIN) freed
    /// bytes resident.
    pub const fn new() -> SharedAlloc {
        SharedAlloc {
            retain: Self::DEFAULT_RETAIN,
        }
    }

    /// The allocator, keeping at most `bytes` freed bytes resident for reuse
    /// (0: every free releases its pages at once). Taken from the first large
    /// allocation on.
    ///
    /// ```
    /// #[global_allocator]
    /// static ALLOC: shmpool::SharedAlloc = shmpool::SharedAlloc::new().with_retain(0);
    /// # fn main() {}
    /// ```
    pub const fn with_retain(self, bytes: usize) -> SharedAlloc {
        SharedAlloc { retain: bytes }
    }

    /// Whether `ptr` lies in this process's shared heap (as its owner: in a
    /// `fork` child, inherited blocks do not count).
    ///
    /// ```
    /// let small = vec![0u8; 16];
    /// assert!(!shmpool::SharedAlloc::contains(small.as_ptr()));
    /// ```
    pub fn contains(ptr: *const u8) -> bool {
        heap_offset(ptr, 1).is_some()
    }

    /// Releases the pages of every freed block kept for reuse.
    ///
    /// ```
    /// shmpool::SharedAlloc::trim(); // nothing to do without the allocator
    /// assert_eq!(shmpool::SharedAlloc::stats().retained_bytes, 0);
    /// ```
    pub fn trim() {
        if owner_base().is_some() {
            let punch = with_books(Books::give_all_warm);
            settle(&punch);
        }
    }

    /// The heap's figures, all zero in a process that has not made one.
    ///
    /// ```
    /// let s = shmpool::SharedAlloc::stats();
    /// assert!(s.resident_bytes <= s.reserved_bytes);
    /// ```
    pub fn stats() -> HeapStats {
        if owner_base().is_none() {
            return HeapStats::default();
        }
        let resident = heap_fd()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map_or(0, |st| (st.st_blocks as usize).saturating_mul(512));
        HeapStats {
            reserved_bytes: LEN.load(Ordering::Relaxed),
            resident_bytes: resident,
            retained_bytes: with_books(|b| b.warm_bytes()),
        }
    }
}

impl Default for SharedAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SharedAlloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAlloc")
            .field("retain", &self.retain)
            .finish()
    }
}

/// The shared heap's figures ([`SharedAlloc::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Address space reserved for the heap.
    pub reserved_bytes: usize,
    /// Memory the heap holds: blocks in use and freed blocks kept.
    pub resident_bytes: usize,
    /// Freed bytes kept resident for reuse.
    pub retained_bytes: usize,
}

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// The heap's life: `UNINIT` until the first large allocation, `BUSY` while
/// one thread makes it (large allocations meanwhile go to `System`), then
/// `READY` or `FAILED` for good.
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// The region's address and length in this process (0 until `READY`).
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// The region's memfd (inherited by `fork` children, closed on exec), open
/// for the rest of the process once set. `OnceLock` neither allocates nor
/// blocks here: only the one thread that makes the heap sets it.
static FD: OnceLock<OwnedFd> = OnceLock::new();
/// The pid of the process that made the heap (inherited as is by children).
static OWNER_PID: AtomicU32 = AtomicU32::new(0);
/// Whether this process owns the heap: set when it is made, cleared in every
/// `fork` child (`in_child`).
static OWNER: AtomicBool = AtomicBool::new(false);
/// Guards `BOOKS`; held only for arithmetic (no allocation, no system call),
/// and never taken outside the owner, so a child forked while another thread
/// held it never waits for it.
static LOCK: AtomicBool = AtomicBool::new(false);
static BOOKS: BooksCell = BooksCell(UnsafeCell::new(Books::new()));
/// The address of the latest block taken from cold (never written) pages: a
/// map writing its output there asks the workers to populate it. A hint only.
static FRESH: AtomicUsize = AtomicUsize::new(0);

struct BooksCell(UnsafeCell<Books>);

// SAFETY: `BOOKS` is reached only through `with_books`, under `LOCK`.
unsafe impl Sync for BooksCell {}

/// The largest alignment the heap serves (larger ones go to `System`).
const MAX_ALIGN: usize = 1 << 30;
/// Region sizes tried in turn.
const REGION_LENS: [usize; 3] = [1 << 40, 1 << 36, 1 << 32];

fn with_books<R>(f: impl FnOnce(&mut Books) -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // sched_yield allocates nothing: safe inside the allocator.
        std::thread::yield_now();
    }
    // SAFETY: `LOCK` is held, so this is the only reference to the books.
    let r = f(unsafe { &mut *BOOKS.0.get() });
    LOCK.store(false, Ordering::Release);
    r
}

/// The heap's memfd, if this process made or inherited one.
fn heap_fd() -> Option<BorrowedFd<'static>> {
    FD.get().map(AsFd::as_fd)
}

/// The region's base if this process owns a ready heap, making it on first use.
fn owner_base() -> Option<usize> {
    match STATE.load(Ordering::Acquire) {
        READY => OWNER
            .load(Ordering::Relaxed)
            .then(|| BASE.load(Ordering::Relaxed)),
        _ => None,
    }
}

/// Makes the heap (one thread; the others use `System` meanwhile).
fn init(retain: usize) -> Option<usize> {
    if STATE
        .compare_exchange(UNINIT, BUSY, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return owner_base();
    }
    // Registered first, so no child forked after the heap holds objects
    // misses the remap. pthread_atfork may allocate a few bytes, which go to
    // `System`: no lock of ours is held.
    // SAFETY: `in_child` is async-signal-safe (atomics and mmap).
    if unsafe { libc::pthread_atfork(None, None, Some(in_child)) } != 0 {
        STATE.store(FAILED, Ordering::Release);
        return None;
    }
    let Some((fd, base, len)) = make_region() else {
        STATE.store(FAILED, Ordering::Release);
        return None;
    };
    with_books(|b| b.init(base, len, retain));
    if FD.set(fd).is_err() {
        // Unreachable: only the thread that moved `STATE` off `UNINIT` sets it.
        STATE.store(FAILED, Ordering::Release);
        return None;
    }
    BASE.store(base, Ordering::Relaxed);
    LEN.store(len, Ordering::Relaxed);
    OWNER_PID.store(std::process::id(), Ordering::Relaxed);
    OWNER.store(true, Ordering::Relaxed);
    STATE.store(READY, Ordering::Release);
    Some(base)
}

/// `shmpool-heap-<pid>`, NUL-terminated, without allocating.
fn memfd_name(pid: u32) -> [u8; 32] {
    let mut name = [0u8; 32];
    let prefix = b"shmpool-heap-";
    name[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (pid, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        k += 1;
        if n == 0 || k == digits.len() {
            break;
        }
    }
    for (i, d) in digits[..k].iter().rev().enumerate() {
        name[prefix.len() + i] = *d;
    }
    name
}

/// Whether the kernel counts every writable private page against a strict
/// commit limit (`vm.overcommit_memory = 2`): fork children could then not
/// remap the region privately, so no heap is made. Read without allocating.
fn strict_overcommit() -> bool {
    let path = c"/proc/sys/vm/overcommit_memory";
    let Ok(fd) = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else {
        return false;
    };
    let mut byte = [0u8; 1];
    matches!(rustix::io::read(&fd, &mut byte), Ok(1)) && byte[0] == b'2'
}

/// A memfd and its shared mapping: `(fd, base, len)`. The descriptor
/// closes on failure.
fn make_region() -> Option<(OwnedFd, usize, usize)> {
    if strict_overcommit() {
        return None;
    }
    let name = memfd_name(std::process::id());
    let name = CStr::from_bytes_until_nul(&name).ok()?;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC).ok()?;
    for len in REGION_LENS {
        // Growing the memfd allocates no memory (sparse).
        if rustix::fs::ftruncate(&fd, len as u64).is_err() {
            continue;
        }
        // Kept for the rest of the process.
        if let Ok(mapping) = Mapping::shared(fd.as_fd(), len, true) {
            return Some((fd, mapping.leak().base() as usize, len));
        }
    }
    None
}

/// The `atfork` child handler: a child of the heap's owner remaps the region
/// privately at the same address, so its writes to inherited objects stay
/// its own, and it allocates no more in the heap. A child of a child already
/// has a private mapping, which `fork` copies as usual.
extern "C" fn in_child() {
    if STATE.load(Ordering::Acquire) != READY || !OWNER.load(Ordering::Relaxed) {
        return;
    }
    let (base, len) = (BASE.load(Ordering::Relaxed), LEN.load(Ordering::Relaxed));
    let Some(fd) = heap_fd() else {
        return;
    };
    for prot in [ProtFlags::READ | ProtFlags::WRITE, ProtFlags::READ] {
        // Read-only if the kernel will not reserve a writable one: a write to
        // an inherited large object then faults rather than reach the parent.
        // SAFETY: replaces exactly the region's own mapping (same address and
        // length) with a private view of the same file: every object in it
        // keeps its address and contents. The child is single-threaded here.
        let remapped = unsafe {
            rustix::mm::mmap(
                base as *mut std::ffi::c_void,
                len,
                prot,
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
                fd,
                0,
            )
        };
        if remapped.is_ok() {
            break;
        }
    }
    OWNER.store(false, Ordering::Relaxed);
}

/// Releases the pages of `extents` (they then read as zero) and records them
/// as cold.
fn settle(punch: &books::Punch) {
    let (fd, base) = (heap_fd(), BASE.load(Ordering::Relaxed));
    for e in punch.extents() {
        // `e` is a range of our own memfd that no live block uses.
        let punched = fd.is_some_and(|fd| {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(fd, mode, e.start as u64, e.len as u64).is_ok()
        });
        if !punched {
            // Cold pages must read as zero, released or not.
            // SAFETY: `e` is a range of the region no live block uses, inside
            // our mapping of it.
            unsafe { std::ptr::write_bytes((base + e.start) as *mut u8, 0, e.len) };
        }
    }
    with_books(|b| {
        for e in punch.extents() {
            b.settle_cold(*e);
        }
    });
}

/// The offset of `[ptr, ptr + bytes)` in this process's heap, if it lies
/// there and this process owns it.
fn heap_offset(ptr: *const u8, bytes: usize) -> Option<u64> {
    let base = owner_base()?;
    let len = LEN.load(Ordering::Relaxed);
    let off = (ptr as usize).checked_sub(base)?;
    (off.checked_add(bytes)? <= len).then_some(off as u64)
}

/// Where the pool's maps find a side that lies in the heap: its offset, for
/// a worker to resolve in its own view ([`view_of`]).
pub(crate) fn map_offset(ptr: *const u8, bytes: usize, align: usize) -> Option<u64> {
    if align > PAGE {
        return None;
    }
    heap_offset(ptr, bytes)
}

/// Whether the block at `ptr` is fresh: taken from cold pages, and not
/// handed out again since (a map's new output vector).
pub(crate) fn is_fresh(ptr: *const u8) -> bool {
    FRESH.load(Ordering::Relaxed) == ptr as usize
}

/// Whether `ptr` lies in the region, owned or inherited.
fn in_region(ptr: *mut u8) -> Option<usize> {
    let base = BASE.load(Ordering::Relaxed);
    let off = (ptr as usize).wrapping_sub(base);
    (base != 0 && off < LEN.load(Ordering::Relaxed)).then_some(off)
}

impl SharedAlloc {
    /// A large block in the heap, if it takes it.
    fn heap_alloc(&self, layout: Layout, zero: bool) -> Option<*mut u8> {
        let base = match owner_base() {
            Some(b) => b,
            None if STATE.load(Ordering::Relaxed) == UNINIT => init(self.retain)?,
            None => return None,
        };
        if layout.align() > MAX_ALIGN {
            return None;
        }
        let size = align_up(layout.size(), PAGE)?;
        let (off, zeroed) = with_books(|b| b.take(size, layout.align().max(PAGE)))?;
        let p = (base + off) as *mut u8;
        if zeroed {
            FRESH.store(p as usize, Ordering::Relaxed);
        } else {
            let _ = FRESH.compare_exchange(p as usize, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        if zero && !zeroed {
            // SAFETY: the block `[p, p + size)` is ours alone now.
            unsafe { std::ptr::write_bytes(p, 0, size) };
        }
        Some(p)
    }

    /// Frees the heap block at offset `off` of `size` bytes (any `size`; the
    /// block's pages round it up).
    fn heap_free(off: usize, size: usize) {
        let Some(size) = align_up(size, PAGE) else {
            return;
        };
        let punch = with_books(|b| b.give(off, size));
        settle(&punch);
    }

    /// A fork child frees an inherited block: its private copies of the
    /// pages go (the file's pages, the parent's, stay).
    fn drop_inherited(ptr: *mut u8, size: usize) {
        let start = (ptr as usize) & !(PAGE - 1);
        if let Some(end) = align_up(ptr as usize + size, PAGE) {
            // SAFETY: a freed block's pages in this process's private view;
            // reading them again would show the file's pages, and nothing reads them.
            let _ = unsafe {
                rustix::mm::madvise(
                    start as *mut std::ffi::c_void,
                    end - start,
                    Advice::LinuxDontNeed,
                )
            };
        }
    }

    /// Moves a block to a new allocation of `new_size`, copying what fits.
    ///
    /// # Safety
    /// As for [`GlobalAlloc::realloc`].
    unsafe fn moved(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_layout` has a non-zero size (realloc's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least the smaller size; the new one
            // is fresh, so they do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated by us with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

// SAFETY: every block handed out is either `System`'s (sizes below the
// threshold, fallbacks) or a page-aligned range of the region no other live
// block overlaps (`Books`); `dealloc` and `realloc` tell them apart by
// address, and nothing here unwinds or allocates under `LOCK`.
unsafe impl GlobalAlloc for SharedAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= Self::THRESHOLD {
            if let Some(p) = self.heap_alloc(layout, false) {
                return p;
            }
        }
        // Small, or the heap cannot take it.
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= Self::THRESHOLD {
            if let Some(p) = self.heap_alloc(layout, true) {
                return p;
            }
        }
        // Small, or the heap cannot take it.
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= Self::THRESHOLD {
            if let Some(off) = in_region(ptr) {
                if OWNER.load(Ordering::Relaxed) {
                    Self::heap_free(off, layout.size());
                } else {
                    Self::drop_inherited(ptr, layout.size());
                }
                return;
            }
        }
        // SAFETY: not in the region, so `System` allocated it.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if old < Self::THRESHOLD && new_size < Self::THRESHOLD {
            // SAFETY: forwarded contract (a small block is `System`'s).
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let owned = OWNER.load(Ordering::Relaxed);
        let move_it = match in_region(ptr) {
            Some(off) if owned && new_size >= Self::THRESHOLD => {
                let (Some(have), Some(want)) = (align_up(old, PAGE), align_up(new_size, PAGE))
                else {
                    return std::ptr::null_mut();
                };
                if want <= have {
                    Self::heap_free(off + want, have - want);
                    return ptr;
                }
                if with_books(|b| b.grow(off, have, want)) {
                    return ptr;
                }
                true // no room to grow in place
            }
            // Across the threshold, or an inherited block.
            Some(_) => true,
            // Into the heap.
            None => {
                new_size >= Self::THRESHOLD && (owned || STATE.load(Ordering::Relaxed) == UNINIT)
            }
        };
        if move_it {
            // SAFETY: forwarded contract.
            unsafe { self.moved(ptr, layout, new_size) }
        } else {
            // SAFETY: not in the region, so `System` allocated it.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

/// The worker is about to run a chunk whose output lies in fresh heap pages
/// (`HEAP_FRESH_OUTPUT`): [`populate_if_fresh`] fills them in one call.
pub(crate) fn output_is_fresh() {
    POPULATE.store(true, Ordering::Relaxed);
}

/// Set by [`output_is_fresh`] for the worker's next chunk.
static POPULATE: AtomicBool = AtomicBool::new(false);

/// Makes the whole pages of `[ptr, ptr + bytes)` present and writable at once
/// if the chunk's output is fresh: one `MADV_POPULATE_WRITE` costs less than a
/// fault per page (about 1.5 against 1.9 µs per 4 KiB here). Only advice: on
/// pages already present it would cost a page-table walk for nothing, hence
/// the flag.
pub(crate) fn populate_if_fresh(ptr: *mut u8, bytes: usize) {
    if !POPULATE.load(Ordering::Relaxed) {
        return;
    }
    POPULATE.store(false, Ordering::Relaxed);
    let (Some(start), Some(end)) = (
        align_up(ptr as usize, PAGE),
        (ptr as usize).checked_add(bytes).map(|e| e & !(PAGE - 1)),
    ) else {
        return;
    };
    if end > start {
        // Whole pages inside the chunk's output, which this worker alone writes.
        crate::sys::vm::advise(start, end - start, crate::sys::vm::Advice::PopulateWrite);
    }
}

/// A worker's shared view of its parent's heap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    base: usize,
    len: usize,
}

impl View {
    /// The address of offset `off` in the view, if it lies inside.
    pub(crate) fn at(&self, off: u64) -> Option<*mut u8> {
        let off = usize::try_from(off).ok()?;
        (off < self.len).then(|| (self.base + off) as *mut u8)
    }
}

/// The view this worker mapped (`VIEW_PID`'s heap).
static VIEW_PID: AtomicU32 = AtomicU32::new(0);
static VIEW_BASE: AtomicUsize = AtomicUsize::new(0);
static VIEW_LEN: AtomicUsize = AtomicUsize::new(0);
/// The mapping behind the view, unmapped when replaced.
static VIEW_MAP: Mutex<Option<Mapping>> = Mutex::new(None);

/// A shared view of the heap of process `parent` (this worker's pool's
/// parent), mapped on first use and kept; `Err(errno)` if it cannot be had.
/// Called by the worker's one task-running thread.
pub(crate) fn view_of(parent: u32) -> Result<View, i32> {
    if VIEW_PID.load(Ordering::Relaxed) == parent {
        return Ok(View {
            base: VIEW_BASE.load(Ordering::Relaxed),
            len: VIEW_LEN.load(Ordering::Relaxed),
        });
    }
    let fd = open_heap(parent)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| e.raw_os_error())?;
    let size = usize::try_from(st.st_size).unwrap_or(0);
    let mapping = Mapping::shared(fd.as_fd(), size, true).map_err(|e| e.raw_os_error())?;
    let p = mapping.base();
    // Replaces (unmaps) the view of an earlier parent: no task of it runs
    // any more.
    *VIEW_MAP.lock().unwrap_or_else(|e| e.into_inner()) = Some(mapping);
    VIEW_BASE.store(p as usize, Ordering::Relaxed);
    VIEW_LEN.store(size, Ordering::Relaxed);
    VIEW_PID.store(parent, Ordering::Relaxed);
    Ok(View {
        base: p as usize,
        len: size,
    })
}

/// At a worker's start, before any limit on its address space: maps the view
/// of its parent's heap now if it inherited the heap through `fork` (a
/// descriptor at hand, so cheap); others map it on their first heap chunk.
pub(crate) fn map_inherited_view(parent: u32) {
    if FD.get().is_some()
        && OWNER_PID.load(Ordering::Relaxed) == parent
        && !OWNER.load(Ordering::Relaxed)
    {
        let _ = view_of(parent);
    }
}

/// A descriptor we opened (closed on drop), or the inherited one (kept).
enum HeapFd {
    Opened(OwnedFd),
    Inherited(BorrowedFd<'static>),
}

impl AsFd for HeapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            HeapFd::Opened(fd) => fd.as_fd(),
            HeapFd::Inherited(fd) => *fd,
        }
    }
}

/// The parent's heap memfd: inherited through `fork`, else found among the
/// parent's descriptors by its name.
fn open_heap(parent: u32) -> Result<HeapFd, i32> {
    if let Some(fd) = heap_fd() {
        if OWNER_PID.load(Ordering::Relaxed) == parent && !OWNER.load(Ordering::Relaxed) {
            return Ok(HeapFd::Inherited(fd));
        }
    }
    let name = memfd_name(parent);
    let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
    let want = format!("/memfd:{} (deleted)", String::from_utf8_lossy(name));
    let dir = format!("/proc/{parent}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if std::fs::read_link(&path).is_ok_and(|t| t.as_os_str() == want.as_str()) {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            return Ok(HeapFd::Opened(file.into()));
        }
    }
    Err(libc::ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memfd_name_carries_the_pid() {
        let n = memfd_name(40213);
        assert!(n.starts_with(b"shmpool-heap-40213\0"));
        let n = memfd_name(0);
        assert!(n.starts_with(b"shmpool-heap-0\0"));
        let n = memfd_name(u32::MAX);
        assert!(n.starts_with(b"shmpool-heap-4294967295\0"));
    }
}
