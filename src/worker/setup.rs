//! What a worker does to its own process before it serves: set the
//! program's signal handlers back to their defaults and ignore `SIGINT`,
//! pin itself to its CPUs, cap the threads of the libraries its tasks may
//! call, limit its address space; and, after each task, the memory cap
//! check.
//!
//! Done here, in the worker, for every start method alike: at this point
//! the worker process has one thread (a forked child of the supervisor, a
//! child of the single-threaded fork server, or a re-executed program in
//! its start-up hook, before `main`), so it may change its environment
//! without racing any other thread. Settings come from the segment, which
//! the parent wrote before the first worker started.

// Unsafe code: a SIGABRT handler (and its write(2)); `environ` set without
// its lock.
#![allow(unsafe_code)]

use crate::shm::layout::Layout;
use rustix::process::{Resource, Rlimit};
use rustix::thread::CpuSet;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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

/// The signals a fault raises in the faulting thread.
const FAULT_SIGNALS: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Applies the pool's per-worker settings to this process (worker `index`).
/// Must run while the process has a single thread.
pub(crate) fn prepare(layout: Layout, index: u32) {
    // A forked worker starts with the program's signal handlers, which would
    // run the program's code here, on its descriptors (a runtime's
    // self-pipe), and keep SIGTERM from ending the worker. The fault signals
    // keep theirs: a crash is reported as the program reports it (Rust's
    // stack-overflow message), and the worker dies of it all the same.
    crate::sys::process::reset_caught_signals(&FAULT_SIGNALS);
    // Ctrl-C sends SIGINT to the terminal's whole foreground process group,
    // workers included: a program that handles it to drain its pool
    // (`close`, `join`) would see its running tasks die with their workers.
    // A worker ignores it and dies with the parent instead, if the parent
    // does (PR_SET_PDEATHSIG); a task may install its own handler.
    crate::sys::process::ignore_signal(libc::SIGINT);
    // SAFETY: the handler reads errno and atomics and calls write(2)
    // (async-signal-safe), then returns, so the abort goes on with the
    // default action.
    let _ = unsafe { crate::sys::process::handle_once(libc::SIGABRT, on_abort) };
    let settings = &layout.header().settings;
    if settings.pinned.load(Ordering::Acquire) != 0 {
        pin(layout, index);
    }
    let mut env: Vec<(&str, String, bool)> = Vec::new();
    let threads = settings.threads_per_worker.load(Ordering::Acquire);
    if threads != 0 {
        env.extend(THREAD_VARS.map(|var| (var, threads.to_string(), false)));
    }
    let limit = settings.memory_limit.load(Ordering::Acquire);
    if limit != 0 {
        // Rust prints a backtrace before it aborts on a failed allocation if
        // asked to, and that work overwrites the `errno` the SIGABRT handler
        // reads; a worker's panics are caught and print nothing anyway.
        env.push(("RUST_BACKTRACE", "0".to_owned(), true));
        limit_address_space(layout, index, limit);
    }
    set_environment(&env);
}

/// This process's figures from `/proc/self/statm`, in bytes: (address
/// space, anonymous resident memory).
pub(crate) fn statm() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (size, resident, shared) = (fields.next()??, fields.next()??, fields.next()??);
    let page = rustix::param::page_size().max(1) as u64;
    Some((
        size.saturating_mul(page),
        resident.saturating_sub(shared).saturating_mul(page),
    ))
}

/// Where the SIGABRT handler records an allocation failure: this worker's
/// segment and index (its `over_limit` word). Set once, before the handler
/// is armed; reading it is an atomic load (async-signal-safe).
static OVER_LIMIT: OnceLock<(Layout, u32)> = OnceLock::new();

/// Lets this process map `limit` bytes more than it has now (`RLIMIT_AS`:
/// the pool's segment is already a large reservation), and has the SIGABRT
/// handler record an abort with `errno` ENOMEM: Rust aborts when an
/// allocation fails, right after the failing call set ENOMEM.
fn limit_address_space(layout: Layout, index: u32, limit: u64) {
    let Some((size, _)) = statm() else { return };
    // `None`: unlimited (RLIM_INFINITY).
    let max = rustix::process::getrlimit(Resource::As).maximum;
    let new = Rlimit {
        current: Some(size.saturating_add(limit).min(max.unwrap_or(u64::MAX))),
        maximum: max,
    };
    let _ = rustix::process::setrlimit(Resource::As, new);
    let _ = OVER_LIMIT.set((layout, index));
}

/// The worker's SIGABRT handler: records an allocation failure past the
/// memory limit (see [`limit_address_space`]), and prints the panics of
/// the task that is aborting the worker (one that could not unwind; see
/// `panic::install_quiet_panic_hook`), which the quiet hook kept.
extern "C" fn on_abort(_signal: libc::c_int) {
    // This thread's errno, as set by the interrupted code (a read of it,
    // async-signal-safe).
    let errno = std::io::Error::last_os_error().raw_os_error();
    if let (Some(libc::ENOMEM), Some((layout, index))) = (errno, OVER_LIMIT.get()) {
        // The segment stays mapped for the process's life.
        layout
            .worker_record(*index)
            .over_limit
            .store(1, Ordering::Relaxed);
    }
    let mut noted = [0u8; crate::panic::NOTE_BYTES];
    let len = crate::panic::copy_noted(&mut noted);
    if len > 0 {
        // SAFETY: write(2) is async-signal-safe; `len` bytes of `noted` are
        // initialized. A short or failed write loses part of a message only.
        unsafe { libc::write(libc::STDERR_FILENO, noted.as_ptr().cast(), len) };
    }
}

/// The anonymous memory this process had when it became ready (bytes),
/// the base of the `max_memory_per_worker` check.
static BASELINE: AtomicU64 = AtomicU64::new(0);

/// Notes the memory the worker has when it becomes ready (only with a cap).
pub(crate) fn note_baseline() {
    if let Some((_, anon)) = statm() {
        BASELINE.store(anon, Ordering::Relaxed);
    }
}

/// After a task, under `max_memory_per_worker` (`cap_kib`): whether the
/// anonymous memory this worker gained since it was ready passed the cap.
/// Records the figure for `Pool::stats`.
pub(crate) fn over_memory_cap(layout: Layout, index: u32, cap_kib: u64) -> bool {
    let Some((_, anon)) = statm() else {
        return false;
    };
    let gained_kib = anon.saturating_sub(BASELINE.load(Ordering::Relaxed)) / 1024;
    let counters = &layout.worker_record(index).counters;
    counters.rss_kib.store(gained_kib, Ordering::Relaxed);
    if gained_kib > cap_kib {
        counters.over_memory.store(1, Ordering::Relaxed);
        return true;
    }
    false
}

/// Restricts this process to the CPUs the parent chose for `index`.
fn pin(layout: Layout, index: u32) {
    let pin = layout.cpu_pin(index);
    let mut set = CpuSet::new();
    let mut any = false;
    for (w, word) in pin.words.iter().enumerate() {
        let bits = word.load(Ordering::Relaxed);
        for b in 0..64 {
            // w * 64 + b < 1024, the size of a cpu_set_t.
            if bits & (1 << b) != 0 && w * 64 + b < CpuSet::MAX_CPU {
                set.set(w * 64 + b);
                any = true;
            }
        }
    }
    if any {
        // A CPU that went offline since the parent checked makes it fail
        // harmlessly.
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// Sets each `(name, value, replace)` variable: always if `replace`, else
/// only if the program did not set it (the thread variables: the user's
/// setting wins).
///
/// Not through `setenv`: in a forked worker, another thread of the parent
/// may have held the C library's (or Rust's) environment lock at the fork,
/// and that lock would stay held forever in the child. A new `environ`
/// array takes no lock; it is leaked, as the process keeps it to its end.
fn set_environment(vars: &[(&str, String, bool)]) {
    let mut entries: Vec<&'static CStr> = Vec::new();
    // SAFETY: this process has one thread (module doc), so nothing changes
    // `environ` meanwhile; it is a NULL-terminated array of C strings that
    // live as long as the process (this function leaks what it installs).
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            entries.push(CStr::from_ptr(*p));
            p = p.add(1);
        }
    }
    let mut added = false;
    for (name, value, replace) in vars {
        let prefix = format!("{name}=");
        let is_it = |e: &&CStr| e.to_bytes().starts_with(prefix.as_bytes());
        let set = entries.iter().any(is_it);
        if set && !replace {
            continue;
        }
        entries.retain(|e| !is_it(e));
        let entry = CString::new(format!("{name}={value}")).expect("no NUL in names or numbers");
        entries.push(Box::leak(entry.into_boxed_c_str()));
        added = true;
    }
    if !added {
        return;
    }
    let array: Vec<*const c_char> = entries
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let array = Box::leak(array.into_boxed_slice());
    // SAFETY: as above, no other thread reads or writes `environ`; the new
    // array and its strings live as long as the process.
    unsafe { environ = array.as_ptr() };
}
