//! The program-wide object heap: one sparse memfd segment, a bump allocator in
//! its header, and the table of the program's processes (for "are my peers
//! alive?" checks).

// Unsafe code: the object heap: raw writes into fresh allocations, a `Shared` header.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::shm::region::{Region, Shared};
use crate::shm::segment::Segment;
use std::mem::{align_of, size_of, MaybeUninit};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Virtual size of the heap (pages cost memory only when touched).
pub(crate) const HEAP_BYTES: usize = 1 << 32;
const MAGIC: u64 = u64::from_le_bytes(*b"shmobj01");
/// Processes the table can list.
const MAX_MEMBERS: usize = 4096;

/// The first bytes of the heap.
#[repr(C)]
struct HeapHeader {
    magic: AtomicU64,
    /// Next free offset (bump allocation; objects are never freed).
    next: AtomicU64,
    /// Pids of the program's processes that may use objects (0 = free entry).
    members: [AtomicU32; MAX_MEMBERS],
}

// SAFETY: atomics only; all-zero is a heap not yet initialized (its magic
// tells).
unsafe impl Shared for HeapHeader {}

const HEADER_BYTES: usize = std::mem::size_of::<HeapHeader>().next_multiple_of(4096);

/// The heap as mapped in this process: for the rest of its life (the heap
/// is never unmapped).
pub(crate) struct Heap {
    region: Region,
    /// The heap's memfd: made here, or inherited.
    fd: OwnedFd,
}

static HEAP: OnceLock<Heap> = OnceLock::new();

/// An allocation no other thread or process knows of yet: its holder alone
/// has its offset, so writing it is safe until [`into_offset`](Self::into_offset)
/// hands the offset out (to be published).
pub(crate) struct Fresh<'h> {
    heap: &'h Heap,
    at: u64,
    len: usize,
}

impl Fresh<'_> {
    /// Where byte `offset` of the allocation lies, for `bytes` bytes of
    /// alignment `align`. Panics outside the allocation or misaligned.
    fn place(&self, offset: usize, bytes: usize, align: usize) -> *mut u8 {
        assert!(
            offset.checked_add(bytes).is_some_and(|end| end <= self.len),
            "a write outside a fresh allocation"
        );
        // In bounds of the mapping: `alloc` keeps the allocation inside it.
        let at = self
            .heap
            .region
            .base()
            .wrapping_add(self.at as usize + offset);
        assert!(at as usize % align == 0, "a misaligned write");
        at
    }

    /// Copies `bytes` (padding included) to `offset` of the allocation.
    pub(crate) fn write_bytes(&mut self, offset: usize, bytes: &[MaybeUninit<u8>]) {
        let at = self.place(offset, bytes.len(), 1);
        // SAFETY: inside the allocation (checked), which nothing else
        // accesses while this handle exists (the type's invariant).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.cast(), bytes.len()) };
    }

    /// Moves `value` to `offset` of the allocation, which must be aligned
    /// for it (panics otherwise).
    pub(crate) fn write<T>(&mut self, offset: usize, value: T) {
        self.place(offset, size_of::<T>(), align_of::<T>());
        self.write_bytes(offset, crate::pod::bytes_of(&value));
        // Moved: its bytes are the heap's now.
        std::mem::forget(value);
    }

    /// The allocation's offset, to publish: writing ends here.
    pub(crate) fn into_offset(self) -> u64 {
        self.at
    }
}

impl Heap {
    /// This process's heap, created (and this process registered) on first use.
    pub(crate) fn get() -> Result<&'static Heap, Error> {
        if let Some(h) = HEAP.get() {
            return Ok(h);
        }
        // One creator: a heap is mapped for good, so none is made in vain.
        static CREATING: Mutex<()> = Mutex::new(());
        let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = HEAP.get() {
            return Ok(h);
        }
        let segment = Segment::create("shmpool-objects", HEAP_BYTES)?;
        let (region, fd) = segment.leak();
        let heap = Heap { region, fd };
        let header = heap.header();
        header.next.store(HEADER_BYTES as u64, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
        let heap = HEAP.get_or_init(|| heap);
        heap.register(std::process::id());
        Ok(heap)
    }

    /// In a spawned process: maps the parent's heap from an inherited
    /// descriptor, kept. Returns `false` if it is not a heap.
    pub(crate) fn adopt(fd: OwnedFd) -> bool {
        let Ok(region) = Segment::map(fd.as_fd(), HEAP_BYTES) else {
            return false;
        };
        let heap = Heap { region, fd };
        if heap.header().magic.load(Ordering::Acquire) != MAGIC {
            return false;
        }
        HEAP.set(heap).is_ok()
    }

    /// `len` zeroed bytes aligned to `align` (≤ 4096), as a [`Fresh`]
    /// allocation its holder may write until it hands the offset out.
    pub(crate) fn alloc_fresh(&self, len: usize, align: usize) -> Result<Fresh<'_>, Error> {
        let at = self.alloc(len, align)?;
        Ok(Fresh {
            heap: self,
            at,
            len,
        })
    }

    /// The heap if this process has one (without creating it).
    pub(crate) fn existing() -> Option<&'static Heap> {
        HEAP.get()
    }

    /// The descriptor to hand to a spawned process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn header(&self) -> &HeapHeader {
        self.region.view(0)
    }

    /// `len` zeroed bytes aligned to `align` (≤ 4096); returns the offset.
    pub(crate) fn alloc(&self, len: usize, align: usize) -> Result<u64, Error> {
        let next = &self.header().next;
        let mut cur = next.load(Ordering::Relaxed);
        loop {
            let start = (cur as usize).next_multiple_of(align.max(64));
            let end = start
                .checked_add(len)
                .filter(|&e| e <= HEAP_BYTES)
                .ok_or_else(|| Error::full("the object heap (4 GiB) is full"))?;
            match next.compare_exchange_weak(cur, end as u64, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(start as u64),
                Err(now) => cur = now,
            }
        }
    }

    /// The object of type `O` at `offset`, if the offset is in bounds and
    /// aligned. (Callers then check the object's kind tag.)
    pub(crate) fn at<O: Shared>(&self, offset: u64) -> Option<&O> {
        let offset = offset as usize;
        let end = offset.checked_add(std::mem::size_of::<O>())?;
        if offset < HEADER_BYTES || end > HEAP_BYTES || offset % std::mem::align_of::<O>() != 0 {
            return None;
        }
        Some(self.region.view(offset))
    }

    /// A raw pointer to the byte at `offset` (< HEAP_BYTES, checked).
    pub(crate) fn ptr(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let end = (offset as usize).checked_add(len)?;
        // In bounds of the mapping (checked), so no wrap happens.
        (offset as usize >= HEADER_BYTES && end <= HEAP_BYTES)
            .then(|| self.region.base().wrapping_add(offset as usize))
    }

    /// Lists `pid` as a process of the program. A full table is first pruned
    /// of the dead (a program that starts thousands of workers over its life
    /// fills it).
    pub(crate) fn register(&self, pid: u32) {
        if !self.replace_entry(0, pid) {
            self.others_alive(); // forgets the dead as it looks
            self.replace_entry(0, pid);
        }
    }

    /// Removes `pid` from the table (it was reaped).
    pub(crate) fn unregister(&self, pid: u32) {
        self.replace_entry(pid, 0);
    }

    /// Replaces the first entry holding `old` with `new`; whether there was one.
    fn replace_entry(&self, old: u32, new: u32) -> bool {
        self.header().members.iter().any(|m| {
            m.compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Whether some process of the program other than this one is alive.
    pub(crate) fn others_alive(&self) -> bool {
        let me = std::process::id();
        let mut any = false;
        for m in &self.header().members {
            let pid = m.load(Ordering::Acquire);
            if pid == 0 || pid == me {
                continue;
            }
            if alive(pid) {
                any = true;
            } else {
                // Forget the dead, so the table does not fill up.
                let _ = m.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        any
    }
}

/// Whether `pid` runs (a zombie does not: it can no longer act).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// An object that lives in the heap and starts with the kind word that names
/// it (written last when the object is made, with `Release`).
pub(crate) trait SharedObject: Shared {
    fn kind(&self) -> &AtomicU32;
}

/// Implements [`SharedObject`] for types whose first field is `kind`.
macro_rules! shared_object {
    ($($t:ty),+ $(,)?) => { $(
        // SAFETY: an object of the heap is `repr(C)`, made of atomics and of
        // cells under its own protocol (a robust mutex, or its one writer);
        // all-zero bytes are valid, and any bytes a process leaves are a
        // valid value: the kind tag is checked before the contents are
        // trusted. (Argued here, once for every object type: the impl may
        // expand in a module that otherwise has no unsafe code.)
        #[allow(unsafe_code)]
        unsafe impl $crate::shm::region::Shared for $t {}
        impl $crate::objects::heap::SharedObject for $t {
            fn kind(&self) -> &std::sync::atomic::AtomicU32 {
                &self.kind
            }
        }
    )+ };
}
pub(crate) use shared_object;

/// Declares a public handle to an object in the heap: it holds only the
/// object's offset, so it is `Copy` and [`Pod`](crate::Pod) and travels into
/// tasks and other processes; every use checks it with [`resolve`].
macro_rules! heap_handle {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(C)]
        pub struct $name {
            at: u64,
        }

        #[diagnostic::do_not_recommend]
        // SAFETY: an offset into the program's object heap, meaningful in
        // every process of the program and checked on every use (`resolve`).
        // (Argued here, once for every handle type.)
        #[allow(unsafe_code)]
        unsafe impl crate::Pod for $name {}
    };
}
pub(crate) use heap_handle;

/// The object at heap offset `at` if it is of kind `tag`: the one check a
/// handle passes before it is used, so that a forged or zeroed handle is an
/// error, never a wild access.
pub(crate) fn resolve<O: SharedObject>(at: u64, tag: u32) -> Result<&'static O, Error> {
    let heap = Heap::existing().ok_or_else(bad_handle)?;
    let obj: &O = heap.at(at).ok_or_else(bad_handle)?;
    if obj.kind().load(Ordering::Acquire) != tag {
        return Err(bad_handle());
    }
    Ok(obj)
}

pub(crate) fn bad_handle() -> Error {
    Error::invalid("not a live shared object of this kind (a forged or zeroed handle?)")
}
