//! What a worker does to its own process before it serves: pin itself to
//! its CPUs and cap the threads of the libraries its tasks may call.
//!
//! Done here, in the worker, for every start method alike: at this point
//! the worker process has one thread (a forked child of the supervisor, a
//! child of the single-threaded fork server, or a re-executed program in
//! its start-up hook, before `main`), so it may change its environment
//! without racing any other thread. Settings come from the segment, which
//! the parent wrote before the first worker started.

use crate::shm::layout::Layout;
use std::ffi::{c_char, CString};
use std::sync::atomic::Ordering;

/// The variables that size the thread pools of OpenMP, the BLAS libraries
/// and rayon; a worker sets each to the pool's `threads_per_worker` unless
/// the program already set it.
const THREAD_VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
];

extern "C" {
    /// The C library's environment (POSIX), read by `getenv`.
    static mut environ: *const *const c_char;
}

/// Applies the pool's per-worker settings to this process (worker `index`).
/// Must run while the process has a single thread.
pub(crate) fn prepare(layout: Layout, index: u32) {
    let settings = &layout.header().settings;
    if settings.pinned.load(Ordering::Acquire) != 0 {
        pin(layout, index);
    }
    let threads = settings.threads_per_worker.load(Ordering::Acquire);
    if threads != 0 {
        limit_threads(threads);
    }
}

/// Restricts this process to the CPUs the parent chose for `index`.
fn pin(layout: Layout, index: u32) {
    let pin = layout.cpu_pin(index);
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let mut any = false;
    for (w, word) in pin.words.iter().enumerate() {
        let bits = word.load(Ordering::Relaxed);
        for b in 0..64 {
            if bits & (1 << b) != 0 {
                // SAFETY: w * 64 + b < 1024, the size of a cpu_set_t.
                unsafe { libc::CPU_SET(w * 64 + b, &mut set) };
                any = true;
            }
        }
    }
    if any {
        // SAFETY: `set` is a valid cpu_set_t of the size passed; a CPU that
        // went offline since the parent checked makes it fail harmlessly.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
}

/// Sets every [`THREAD_VARS`] variable the program did not set to `threads`.
///
/// Not through `setenv`: in a forked worker, another thread of the parent
/// may have held the C library's (or Rust's) environment lock at the fork,
/// and that lock would stay held forever in the child. A new `environ`
/// array takes no lock; it is leaked, as the process keeps it to its end.
fn limit_threads(threads: u32) {
    let mut added: Vec<*const c_char> = Vec::new();
    for var in THREAD_VARS {
        let name = CString::new(var).expect("no NUL in the names");
        // SAFETY: getenv reads the environment without taking a lock; the
        // name is NUL-terminated.
        if unsafe { libc::getenv(name.as_ptr()) }.is_null() {
            let entry = CString::new(format!("{var}={threads}")).expect("no NUL");
            added.push(entry.into_raw());
        }
    }
    if added.is_empty() {
        return;
    }
    let mut entries: Vec<*const c_char> = Vec::new();
    // SAFETY: this process has one thread (module doc), so nothing changes
    // `environ` meanwhile; it is a NULL-terminated array of C strings.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            entries.push(*p);
            p = p.add(1);
        }
    }
    entries.extend(added);
    entries.push(std::ptr::null());
    let array = Box::leak(entries.into_boxed_slice());
    // SAFETY: as above, no other thread reads or writes `environ`; the new
    // array and its strings live as long as the process.
    unsafe { environ = array.as_ptr() };
}
