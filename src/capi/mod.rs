//! The C API: `libshmpool.so` / `libshmpool.a` (built by the `shmpool-capi`
//! package, `cargo build --release -p shmpool-capi`) and
//! `include/shmpool.h`, so that C and Fortran programs can run a C function
//! over arrays in worker processes.
//!
//! ```c
//! #include <shmpool.h>
//! static void square(const void *in, void *out, const void *ctx) {
//!     *(double *)out = *(const double *)in * *(const double *)in;
//! }
//! int main(void) {
//!     shmpool_init();                                    /* first, for spawn and forkserver */
//!     shmpool_options opt = shmpool_options_default();
//!     opt.processes = 4;
//!     shmpool_pool *pool = shmpool_pool_new(&opt);       /* NULL on error: see shmpool_last_error() */
//!     int rc = shmpool_map(pool, square, in, sizeof(double), out, sizeof(double), n, 0, NULL, 0);
//!     shmpool_pool_free(pool);
//! }
//! ```
//!
//! Every function returns a status (`SHMPOOL_OK` or an error code) or a
//! pointer (`NULL` on error); `shmpool_last_error()` then describes the error,
//! for the calling thread. Rust callers use [`Pool`] instead.
//!
//! The header is generated from this file by cbindgen; a test fails when the
//! checked-in header differs from what it generates.

// Unsafe code: the C API: raw pointers from C, `#[no_mangle]` functions.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

mod call;

pub(crate) use call::c_entry;

use crate::pool::schedule::{self, Elem, MapCall};
use crate::task::Entry;
use crate::{Error, Pool, StartMethod};
use call::{CallDesc, ElementFn, F64Fn, ELEMENT, F64};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Success.
pub const SHMPOOL_OK: c_int = 0;
/// An argument is invalid: a null pointer, zero processes, a zero element
/// size, a function the workers cannot call (with spawn or forkserver, one
/// outside the executable), a pool already closed.
pub const SHMPOOL_INVALID: c_int = 1;
/// The worker running part of the call died (a segfault, `abort()`, `exit()`
/// or a signal in the C function). The pool replaced it and goes on.
pub const SHMPOOL_WORKER_DIED: c_int = 2;
/// Part of the call ran longer than the pool's task timeout; its worker was
/// killed and replaced.
pub const SHMPOOL_TIMEOUT: c_int = 3;
/// Part of the call failed inside the worker without killing it.
pub const SHMPOOL_TASK_FAILED: c_int = 4;
/// A worker process could not be started.
pub const SHMPOOL_START_FAILED: c_int = 5;
/// The operating system refused something (shared memory, `fork`).
pub const SHMPOOL_IO: c_int = 6;
/// Any other error; `shmpool_last_error()` says which.
pub const SHMPOOL_ERROR: c_int = 7;

/// Start a pool's workers with `fork()` (the default).
pub const SHMPOOL_START_FORK: c_int = 0;
/// Start them from a fork server started once.
pub const SHMPOOL_START_FORKSERVER: c_int = 1;
/// Start them by running the executable again (call `shmpool_init()` first
/// thing in `main`).
pub const SHMPOOL_START_SPAWN: c_int = 2;

/// How to build a pool; start from `shmpool_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct shmpool_options {
    /// Worker processes (default: one per CPU; 0 is invalid).
    pub processes: usize,
    /// One of the `SHMPOOL_START_*` constants.
    pub start_method: c_int,
    /// How many times a task whose worker died is run again (default 0).
    pub retries: u32,
    /// Milliseconds a task may run before its worker is killed; 0: no limit.
    pub task_timeout_ms: u64,
    /// Non-zero (the default): workers read and write the caller's arrays
    /// where they lie; 0: copy through shared memory. See the README's
    /// "Zero-copy maps" for what zero-copy opens.
    pub zero_copy: c_int,
}

/// A pool of worker processes, made by `shmpool_pool_new`.
pub struct shmpool_pool {
    pool: Pool,
}

impl shmpool_pool {
    /// The Rust pool behind a C handle, for programs that use both.
    pub fn as_pool(&self) -> &Pool {
        &self.pool
    }
}

/// `void f(const void *in, void *out, const void *ctx)`: computes one output
/// element from one input element; `ctx` is the call's context bytes.
pub type shmpool_fn =
    Option<unsafe extern "C" fn(input: *const c_void, output: *mut c_void, ctx: *const c_void)>;

/// `double f(double)`.
pub type shmpool_fn_f64 = Option<unsafe extern "C" fn(x: f64) -> f64>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// The code of `e`, after recording its message for `shmpool_last_error`.
fn status(e: &Error) -> c_int {
    set_last_error(&e.to_string());
    match e {
        Error::InvalidArgument(_) | Error::InvalidState(_) | Error::Closed => SHMPOOL_INVALID,
        Error::WorkerDied { .. } => SHMPOOL_WORKER_DIED,
        Error::Timeout | Error::TaskTimedOut { .. } => SHMPOOL_TIMEOUT,
        Error::TaskPanicked { .. } => SHMPOOL_TASK_FAILED,
        Error::StartFailed(_) | Error::InitializerFailed { .. } => SHMPOOL_START_FAILED,
        Error::Io(_) => SHMPOOL_IO,
        _ => SHMPOOL_ERROR,
    }
}

/// Runs `f` for a C caller: its result, or `fail` after recording why
/// (an error or a panic: no panic crosses into C).
fn guard<R>(fail: R, f: impl FnOnce() -> Result<R, Error>) -> (R, c_int) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => {
            set_last_error("");
            (r, SHMPOOL_OK)
        }
        Ok(Err(e)) => (fail, status(&e)),
        Err(_) => {
            set_last_error("shmpool: internal panic");
            (fail, SHMPOOL_ERROR)
        }
    }
}

fn invalid(message: &str) -> Error {
    Error::invalid(message.to_owned())
}

/// Takes this process's role if it was started as a worker (spawn or
/// forkserver) and never returns then. Call it first thing in `main`; without
/// it, a spawned worker runs `main` up to its first `shmpool_pool_new`.
#[no_mangle]
pub extern "C" fn shmpool_init() {
    let _ = catch_unwind(crate::init);
}

/// The defaults: one process per CPU, fork, no retries, no task timeout,
/// zero-copy on.
#[no_mangle]
pub extern "C" fn shmpool_options_default() -> shmpool_options {
    shmpool_options {
        processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
        start_method: SHMPOOL_START_FORK,
        retries: 0,
        task_timeout_ms: 0,
        zero_copy: 1,
    }
}

/// Starts a pool as `options` say (`NULL`: the defaults). Returns `NULL` on
/// error; `shmpool_last_error()` says why. Free it with `shmpool_pool_free`.
///
/// # Safety
/// `options` is `NULL` or points at a valid `shmpool_options`.
#[no_mangle]
pub unsafe extern "C" fn shmpool_pool_new(options: *const shmpool_options) -> *mut shmpool_pool {
    // SAFETY: null or valid (contract).
    let options = unsafe { options.as_ref() }
        .copied()
        .unwrap_or_else(|| shmpool_options_default());
    guard(std::ptr::null_mut(), || {
        let method = match options.start_method {
            SHMPOOL_START_FORK => StartMethod::Fork,
            SHMPOOL_START_FORKSERVER => StartMethod::ForkServer,
            SHMPOOL_START_SPAWN => StartMethod::Spawn,
            _ => return Err(invalid("start_method is not a SHMPOOL_START_* constant")),
        };
        let mut builder = Pool::builder()
            .processes(options.processes)
            .start_method(method)
            .retries(options.retries)
            .zero_copy(options.zero_copy != 0);
        if options.task_timeout_ms != 0 {
            builder = builder.task_timeout(Duration::from_millis(options.task_timeout_ms));
        }
        let pool = builder.build()?;
        Ok(Box::into_raw(Box::new(shmpool_pool { pool })))
    })
    .0
}

/// Terminates the pool (unfinished work is dropped), waits for its workers
/// and frees it. `NULL` does nothing.
///
/// # Safety
/// `pool` is `NULL` or a pool from `shmpool_pool_new` not yet freed, and no
/// other thread uses it.
#[no_mangle]
pub unsafe extern "C" fn shmpool_pool_free(pool: *mut shmpool_pool) {
    if !pool.is_null() {
        // SAFETY: made by Box::into_raw in shmpool_pool_new, freed once (contract).
        let pool = unsafe { Box::from_raw(pool) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(pool)));
    }
}

/// The number of worker processes of `pool` (0 for `NULL`).
///
/// # Safety
/// `pool` is `NULL` or a live pool from `shmpool_pool_new`.
#[no_mangle]
pub unsafe extern "C" fn shmpool_processes(pool: *const shmpool_pool) -> usize {
    // SAFETY: null or live (contract).
    unsafe { pool.as_ref() }.map_or(0, |p| p.pool.processes())
}

/// `f(in + i * in_size, out + i * out_size, ctx)` for every `i < n`, in the
/// workers, in chunks of `chunksize` elements (0: `ceil(n / (4 × processes))`,
/// as Python's `Pool.map`). The `ctx_len` bytes at `ctx` are copied to the
/// workers once per call (a pointer would mean nothing in another process);
/// `f` gets a pointer to that copy, or `NULL` if `ctx_len` is 0.
///
/// Returns `SHMPOOL_OK` once every output is written, and `SHMPOOL_INVALID`,
/// before anything runs, for sizes no array can have (`n * in_size` or
/// `n * out_size` overflowing, or above `PTRDIFF_MAX`). If `f` crashes a
/// worker, `SHMPOOL_WORKER_DIED` (unless `retries` ran it again
/// successfully): then `out` is only partly written. The pool goes on either
/// way.
///
/// # Safety
/// `pool` is a live pool; `in` holds `n * in_size` readable bytes and `out`
/// `n * out_size` writable ones, not overlapping, and untouched by other
/// threads during the call; `ctx` holds `ctx_len` readable bytes; `f` is a
/// function of this program that reads only its element and `ctx`, and writes
/// only its output element.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn shmpool_map(
    pool: *const shmpool_pool,
    f: shmpool_fn,
    input: *const c_void,
    in_size: usize,
    output: *mut c_void,
    out_size: usize,
    n: usize,
    chunksize: usize,
    ctx: *const c_void,
    ctx_len: usize,
) -> c_int {
    guard((), || {
        let f: ElementFn = f.ok_or_else(|| invalid("the function is NULL"))?;
        if in_size == 0 || out_size == 0 {
            return Err(invalid("element sizes must be at least 1"));
        }
        let ctx = if ctx_len == 0 {
            &[][..]
        } else if ctx.is_null() {
            return Err(invalid("ctx is NULL but ctx_len is not 0"));
        } else if ctx_len > isize::MAX as usize {
            return Err(invalid(
                "ctx_len is larger than any object can be (above PTRDIFF_MAX)",
            ));
        } else {
            // SAFETY: `ctx_len` readable bytes (contract).
            unsafe { std::slice::from_raw_parts(ctx.cast::<u8>(), ctx_len) }
        };
        // SAFETY: forwarded contract.
        unsafe {
            map_c(
                pool,
                ELEMENT,
                f as usize,
                input.cast(),
                Elem::of_size(in_size),
                output.cast(),
                Elem::of_size(out_size),
                n,
                chunksize,
                ctx,
            )
        }
    })
    .1
}

/// `out[i] = f(in[i])` for every `i < n`, in the workers, with the default
/// chunk size. Returns as `shmpool_map` does.
///
/// # Safety
/// `pool` is a live pool; `in` and `out` hold `n` doubles each, not
/// overlapping, untouched by other threads during the call; `f` is a function
/// of this program.
#[no_mangle]
pub unsafe extern "C" fn shmpool_map_f64(
    pool: *const shmpool_pool,
    f: shmpool_fn_f64,
    input: *const f64,
    output: *mut f64,
    n: usize,
) -> c_int {
    guard((), || {
        let f: F64Fn = f.ok_or_else(|| invalid("the function is NULL"))?;
        let elem = Elem::of::<f64>();
        // SAFETY: forwarded contract.
        unsafe {
            map_c(
                pool,
                F64,
                f as usize,
                input.cast(),
                elem,
                output.cast(),
                elem,
                n,
                0,
                &[],
            )
        }
    })
    .1
}

/// `f(in, out, NULL)` once, in a worker; waits for it. Returns as
/// `shmpool_map` does.
///
/// # Safety
/// As for `shmpool_map` with `n` = 1 and no context.
#[no_mangle]
pub unsafe extern "C" fn shmpool_apply(
    pool: *const shmpool_pool,
    f: shmpool_fn,
    input: *const c_void,
    in_size: usize,
    output: *mut c_void,
    out_size: usize,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        shmpool_map(
            pool,
            f,
            input,
            in_size,
            output,
            out_size,
            1,
            1,
            std::ptr::null(),
            0,
        )
    }
}

/// Why the calling thread's last failed call failed (an empty string after
/// a successful one). The string stays valid until this thread's next call
/// into shmpool.
#[no_mangle]
pub extern "C" fn shmpool_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The common part of the map calls: checks, copies `ctx` into the pool's
/// shared memory, and runs the call description through [`schedule::map_raw`].
///
/// # Safety
/// As for `shmpool_map`, with `function` the address of a function of `kind`.
#[allow(clippy::too_many_arguments)]
unsafe fn map_c(
    pool: *const shmpool_pool,
    kind: u32,
    function: usize,
    input: *const u8,
    in_elem: Elem,
    output: *mut u8,
    out_elem: Elem,
    n: usize,
    chunksize: usize,
    ctx: &[u8],
) -> Result<(), Error> {
    // SAFETY: null or live (contract).
    let pool = &unsafe { pool.as_ref() }
        .ok_or_else(|| invalid("the pool is NULL"))?
        .pool;
    if n == 0 {
        return Ok(());
    }
    if input.is_null() || output.is_null() {
        return Err(invalid("an array is NULL"));
    }
    // Before anything is allocated; `map_raw` checks again with the same
    // function, so both of its paths see only sizes that passed.
    schedule::MapBytes::check(n, in_elem, out_elem, input, output.cast_const())?;
    let core = pool.core();
    let method = pool.start_method();
    let entry = crate::start::check_entry(method, c_entry as Entry)?;
    let function = crate::start::check_code(method, function)?;
    let chunksize = if chunksize == 0 {
        schedule::default_chunksize(n, pool.processes())
    } else {
        chunksize
    };
    let ctx_bytes = crate::pod::bytes_of(ctx);
    let block = (!ctx.is_empty())
        .then(|| core.alloc_block_from(ctx.len(), 64, ctx_bytes))
        .transpose()?;
    let ctx_at = block.map_or(0, crate::pool::core::Core::block_offset);
    let desc = CallDesc {
        kind,
        _pad: 0,
        function,
        in_size: in_elem.size as u64,
        out_size: out_elem.size as u64,
        ctx: ctx_at,
        ctx_len: ctx.len() as u64,
    };
    let call = MapCall {
        entry,
        input: in_elem,
        output: out_elem,
        chunksize,
        in_place: false,
        fold: false,
        context: desc.as_bytes(),
    };
    // SAFETY: forwarded contract; `c_entry` maps elements as `desc` describes.
    let result = unsafe { schedule::map_raw(core, input, output, n, call) };
    if let Some(b) = block {
        core.free_block(b);
    }
    result
}
