//! How a function travels to a worker: as the address of a monomorphized entry
//! point, never as a closure's data.
//!
//! A task is a function item or a non-capturing closure (a zero-sized type),
//! a `fn` pointer into the executable, or either with bound values
//! ([`partial`]). The worker does not need a function item's bytes (there are
//! none); it needs code that calls it with the right argument and result
//! types. For each `(F, Args)` the compiler instantiates an [`Entry`] function
//! that reads the arguments from the slot, calls `F` and writes the result;
//! its address is stored in the slot as an offset from [`anchor`], a function
//! of this crate, so the same scheme works when a worker maps the binary at
//! another address (spawned workers). With fork the offset is exact by
//! construction.
//!
//! What a task carries besides its type, [`Task::Bound`], travels as plain
//! bytes with each call (once per `apply`, once per map chunk, never once per
//! element): a `fn` pointer as its code offset, checked to lie in the
//! executable ([`FnCode`]), and a [`Partial`]'s bound value.
//!
//! A capturing closure cannot travel: its captured values could be pointers
//! into the parent's heap, which would be read as garbage in the worker. It
//! is refused at compile time, with a message that names [`partial`]:
//!
//! ```compile_fail,E0080
//! let offset = 3u64;
//! let pool = shmpool::Pool::new(1).unwrap();
//! pool.map(move |x: u64| x + offset, &[1, 2]).unwrap();
//! ```

// Unsafe code: entry points over raw task data; functions from code offsets.
#![allow(unsafe_code)]

mod partial;
#[cfg(feature = "serde")]
pub(crate) mod serde;

pub use partial::{partial, Partial};

use crate::error::Error;
use crate::remote::{AccessRefused, Peer, Stage};
use crate::Pod;
use std::any::Any;
use std::mem::{size_of, MaybeUninit};

/// A function a pool can run with arguments `Args` (a tuple of [`Pod`] values).
///
/// Implemented for every function item, non-capturing closure and `fn`
/// pointer taking up to six `Pod` arguments and returning a `Pod` value
/// (including `()`), and for [`Partial`], a task with bound values (see
/// [`partial`]). You do not implement it yourself.
///
/// A closure's argument types must be written out (`|x: f64| x * x`): the
/// pool's calls accept things that are not closures too, so the compiler
/// cannot infer them from the call.
///
/// ```
/// use shmpool::{partial, Pool};
/// fn square(x: u64) -> u64 { x * x }
/// fn cube(x: u64) -> u64 { x * x * x }
/// fn shift(by: u64, x: u64) -> u64 { x << by }
///
/// let pool = Pool::new(2)?;
/// // A table of functions, as a benchmark harness keeps one.
/// let table: [(&str, fn(u64) -> u64); 2] = [("square", square), ("cube", cube)];
/// for (name, f) in table {
///     assert_eq!(pool.map(f, &[2, 3])?, [f(2), f(3)], "{name}");
/// }
/// assert_eq!(pool.apply(partial(shift, 4), (1,))?, 16);
/// assert_eq!(pool.map(|x: u64| x + 1, &[1])?, [2]);
/// # Ok::<(), shmpool::Error>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run in a worker process as a task taking `{Args}`",
    label = "not a task taking `{Args}`",
    note = "a task is a function item, a `fn` pointer, a non-capturing closure with its argument types written out (`|x: f64| x * x`), or `shmpool::partial(f, value)`, taking and returning `Pod` values",
    note = "a value bound by `shmpool::partial` must be `Pod` too",
    note = "for `String`, `Vec`, paths or your own serde types (as arguments, results or bound values), use `pool.serde()`"
)]
// A proxy bound by `partial` makes the whole task fail this bound, not
// `Pod`, whose note would name the borrowed form: say it here too.
#[cfg_attr(
    feature = "manager",
    diagnostic::on_unimplemented(
        note = "for a Manager proxy (`DictProxy`, `QueueProxy`, ...), as an argument or bound by `partial`, pass `proxy.borrowed()` and take a `shmpool::manager::Borrowed<...>` in the task"
    )
)]
pub trait Task<Args>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output: Pod;
    /// What travels with each call besides the arguments.
    #[doc(hidden)]
    type Bound: Pod;
    /// Fails to evaluate for a closure that captures variables. Named in
    /// the body of each call that takes a task, so the compiler's note says
    /// the error "was encountered while instantiating" that call, at the
    /// user's line.
    #[doc(hidden)]
    const TRAVELS: () = ();
    /// How many bytes of a map's context the bound takes: only what a call
    /// needs (nothing for a function item, whose type says everything), so
    /// the room is the user's bound values'.
    #[doc(hidden)]
    const PACKED: usize;
    /// Appends the bound's [`PACKED`](Task::PACKED) bytes to `context`.
    #[doc(hidden)]
    fn pack(bound: &Self::Bound, context: &mut Vec<MaybeUninit<u8>>);
    /// The bound whose bytes `pack` wrote at the start of `context`.
    ///
    /// # Safety
    /// `context` starts with the [`PACKED`](Task::PACKED) bytes `pack` wrote
    /// for a bound of this type (in a process of the same binary). Panics if
    /// it is shorter.
    #[doc(hidden)]
    unsafe fn unpack(context: &[u8]) -> Self::Bound;
    /// In the parent: checks that the task can travel and encodes it.
    #[doc(hidden)]
    fn bind(&self) -> Result<Self::Bound, Error>;
    /// In the worker: calls the task.
    #[doc(hidden)]
    fn call(bound: &Self::Bound, args: Args) -> Self::Output;
}

/// Names the tasks' [`Task::TRAVELS`] in the body of a function a user
/// calls, so that a capturing closure's error ends with the compiler's note
/// "the above error was encountered while instantiating" *that* function,
/// at the user's line.
macro_rules! travels {
    ($($f:ident),+) => {
        $(
            #[allow(clippy::let_unit_value)]
            let () = $f::TRAVELS;
        )+
    };
}
pub(crate) use travels;

/// A function that may be a task: one that can be copied to a worker
/// process, so not a closure that captures a `String`, a `Vec` or a
/// reference. Only its compiler message differs from those bounds'.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run in a worker process: a closure that captures variables cannot travel",
    label = "a closure that captures variables",
    note = "bind the values instead: `shmpool::partial(f, value)` calls `f(value, x)` for each `x`, with `fn f(value: V, x: T) -> U`",
    note = "with `pool.serde()`, `partial` binds any serde value (a `String`, a `Vec`): `pool.serde().map(shmpool::partial(f, value), &xs)`"
)]
#[doc(hidden)]
pub trait TaskFunction: Copy + Send + Sync + 'static {}
#[diagnostic::do_not_recommend]
impl<F: Copy + Send + Sync + 'static> TaskFunction for F {}

/// A task function's code, as [`Task::Bound`] carries it: the offset of a
/// `fn` pointer's code from [`anchor`]; unused (0) for a function item, whose
/// type says everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
#[doc(hidden)]
pub struct FnCode(u64);

// SAFETY: a plain integer; an offset means the same in every process of the
// same binary, and zero is a valid value (no function).
#[diagnostic::do_not_recommend]
unsafe impl Pod for FnCode {}

impl FnCode {
    /// Encodes `f`, a function of the pointer type `P` (`fn(A, ..) -> R`) or
    /// a zero-sized function item or closure of that signature; `address`
    /// gives a `P`'s code address (`|p| *p as usize`).
    fn of<F: Copy + 'static, P: Copy + 'static>(
        f: &F,
        address: impl FnOnce(&P) -> usize,
    ) -> Result<FnCode, Error> {
        if size_of::<F>() == 0 {
            return Ok(FnCode(0));
        }
        let Some(pointer) = (f as &dyn Any).downcast_ref::<P>() else {
            // Pointer-sized with a niche, but not a `fn` pointer: a closure
            // capturing one reference or box.
            return Err(Error::invalid(format!(
                "`{}` captures a value, which cannot travel to a worker process: pass \
                 it as an argument or bind it with `shmpool::partial(f, value)`",
                std::any::type_name::<F>()
            )));
        };
        check_fn_pointer(address(pointer)).map(FnCode)
    }

    /// The function this encodes, as a `fn` pointer of type `P`.
    ///
    /// # Safety
    /// `self` encodes the code of a `P` of this binary: it came from
    /// [`FnCode::of`] with the same `P` (or from [`EntryPoint::new`], for an
    /// [`Entry`]), in a process of the same binary (only the parent writes
    /// task descriptions).
    #[inline(always)]
    unsafe fn resolve<P: Copy>(self) -> P {
        let addr = code_at(self.0);
        // SAFETY: the address of a `P` of this binary (contract); `P` is a
        // `fn` pointer type, the size of an address.
        unsafe { std::mem::transmute_copy::<usize, P>(&addr) }
    }
}

/// Refuses, at compile time, a task that carries data: only zero-sized
/// functions and `fn` pointers (pointer-sized with a niche) may pass; the
/// rest of the pointer-sized ones are told apart from `fn` pointers at run
/// time ([`FnCode::of`]).
pub(crate) const fn assert_travels<F>() {
    let size = size_of::<F>();
    let fn_pointer_like = size == size_of::<usize>() && size_of::<Option<F>>() == size;
    assert!(
        size == 0 || fn_pointer_like,
        "shmpool: a closure that captures variables cannot run in a worker process. \
         Bind the values instead: `shmpool::partial(f, value)` calls `f(value, x)` \
         for each `x`, with `fn f(value: V, x: T) -> U` (see the docs of `shmpool::partial`). \
         The note below that says `the above error was encountered while instantiating` shows \
         your call, and names the closure as `{{closure@FILE:LINE:COL}}`"
    );
}

macro_rules! impl_task {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg),*> Task<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + TaskFunction,
            Ret: crate::pod::TaskValue,
            $($arg: crate::pod::TaskValue,)*
        {
            type Output = Ret;
            type Bound = FnCode;
            const TRAVELS: () = assert_travels::<Func>();

            const PACKED: usize = if size_of::<Func>() == 0 { 0 } else { size_of::<FnCode>() };

            fn bind(&self) -> Result<FnCode, Error> {
                #[allow(clippy::let_unit_value)]
                let () = Self::TRAVELS;
                FnCode::of(self, |p: &fn($($arg),*) -> Ret| *p as usize)
            }

            fn pack(code: &FnCode, context: &mut Vec<MaybeUninit<u8>>) {
                context.extend_from_slice(&crate::pod::bytes_of(code)[..Self::PACKED]);
            }

            unsafe fn unpack(context: &[u8]) -> FnCode {
                // SAFETY: `pack` wrote a `FnCode` there, or nothing for a
                // function item, whose code is unused (contract).
                unsafe { unpack_at(context, Self::PACKED) }
            }

            #[inline(always)]
            #[allow(non_snake_case)]
            fn call(code: &FnCode, ($($arg,)*): ($($arg,)*)) -> Ret {
                if size_of::<Func>() == 0 {
                    // SAFETY: a zero-sized function type the parent was given
                    // a value of (`bind` ran there).
                    let f = unsafe { conjure::<Func>() };
                    f($($arg),*)
                } else {
                    // SAFETY: `bind` encoded a `fn` pointer of exactly this
                    // type (it checks the type), in the parent.
                    let f = unsafe { code.resolve::<fn($($arg),*) -> Ret>() };
                    f($($arg),*)
                }
            }
        }
    };
}
crate::pod::for_each_arity!(impl_task: A, B, C, D, E, G);

/// The `V` at the start of `context` if `len` (0 or its size) says one was
/// written there, else the all-zero `V`: a part of a bound that a call does
/// not use.
///
/// # Safety
/// If `len` is not 0, `context` starts with the bytes of a `V`.
#[inline(always)]
unsafe fn unpack_at<V: Pod>(context: &[u8], len: usize) -> V {
    if len == 0 {
        return crate::pod::zeroed();
    }
    assert!(
        len == size_of::<V>() && context.len() >= len,
        "a bound longer than its context"
    );
    // SAFETY: in bounds (checked); the parent wrote a `V` there (contract),
    // so its bytes are a valid one; read unaligned.
    unsafe { context.as_ptr().cast::<V>().read_unaligned() }
}

/// A task's bound as a map's call context (`MapCall::context`): what every
/// chunk's slot carries for its entry point, only the bytes a call needs.
pub(crate) fn context_of<F: Task<Args>, Args>(bound: &F::Bound) -> Vec<MaybeUninit<u8>> {
    let mut context = Vec::new();
    F::pack(bound, &mut context);
    context
}

/// Where a worker finds a task's data: pointers and an element count.
///
/// Without `remote`, both pointers are this process's (resolved in the
/// segment). With it, the side it names holds an address in the caller's
/// memory, reached through the worker's stage (see `pool::zero_copy`).
pub(crate) struct TaskIo<'a> {
    pub(crate) input: *const u8,
    pub(crate) output: *mut u8,
    pub(crate) len: usize,
    pub(crate) remote: Option<Remote<'a>>,
    /// The slot's inline bytes (a copy), for an entry point whose bound
    /// bytes or call description the parent wrote there; empty where there
    /// is none.
    pub(crate) context: &'a [u8],
    /// The segment's base in this process, to resolve offsets found in
    /// `context`; null where there is none.
    pub(crate) segment: *const u8,
}

/// Which sides of a map task lie in the caller's memory, and how to reach it.
pub(crate) struct Remote<'a> {
    pub(crate) peer: Peer,
    pub(crate) input: bool,
    pub(crate) output: bool,
    pub(crate) stage: &'a mut Stage,
}

impl TaskIo<'_> {
    /// A task whose data lies in this process.
    pub(crate) fn local(input: *const u8, output: *mut u8, len: usize) -> TaskIo<'static> {
        TaskIo {
            input,
            output,
            len,
            remote: None,
            context: &[],
            segment: std::ptr::null(),
        }
    }
}

/// The signature of every entry point: only a map task over the caller's
/// memory can fail (the kernel refused the access).
pub(crate) type Entry = for<'a> unsafe fn(TaskIo<'a>) -> Result<(), AccessRefused>;

/// The reference point for relocatable entry offsets.
#[inline(never)]
fn anchor() {}

/// Where [`anchor`] lies in this process.
pub(crate) fn anchor_address() -> usize {
    anchor as fn() as usize
}

/// An entry point encoded as an offset from [`anchor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryPoint(pub(crate) u64);

impl EntryPoint {
    /// Encodes `entry`.
    pub(crate) fn new(entry: Entry) -> Self {
        EntryPoint(code_offset(entry as usize))
    }

    /// Runs the entry point this encodes on `io`.
    ///
    /// # Safety
    /// `self` must come from [`EntryPoint::new`] in a process running the
    /// same binary (the slot protocol guarantees it: only the parent writes
    /// entries), and `io` is what that entry point's own contract asks for:
    /// the parent wrote the two together, in one task description.
    #[inline]
    pub(crate) unsafe fn call(self, io: TaskIo<'_>) -> Result<(), AccessRefused> {
        // SAFETY: the code of an `Entry` of this binary, and its data, from
        // one description (contract).
        unsafe { FnCode(self.0).resolve::<Entry>()(io) }
    }
}

/// Encodes the address of a `fn` pointer given as a task. Whatever the start
/// method, it must point into the executable's code: a pointer into a library
/// loaded at run time, or into memory made executable (a JIT), is refused
/// rather than trusted, since nothing tells such a pointer from a wrong one.
fn check_fn_pointer(addr: usize) -> Result<u64, Error> {
    let (start, end) = crate::sys::executable::text();
    if !(start..end).contains(&addr) {
        return Err(Error::invalid(format!(
            "a `fn` pointer given as a task must point into the executable's code; \
             {addr:#x} lies outside it (a dynamically loaded library, or generated code)"
        )));
    }
    Ok(code_offset(addr))
}

/// The offset of the code at `addr` from [`anchor`]: what travels to a worker
/// for any function (an entry point, or a C function given to the C API).
pub(crate) fn code_offset(addr: usize) -> u64 {
    addr.wrapping_sub(anchor_address()) as u64
}

/// The address in this process of the code at `offset` from [`anchor`].
pub(crate) fn code_at(offset: u64) -> usize {
    anchor_address().wrapping_add(offset as usize)
}

/// Makes a value of the zero-sized function type `F`.
///
/// # Safety
/// `F` is zero-sized and `Copy`, and a value of it existed (the parent was given
/// one), so reading it out of thin air is the same as copying that value.
#[inline(always)]
unsafe fn conjure<F: Copy>() -> F {
    debug_assert_eq!(size_of::<F>(), 0);
    // SAFETY: reading a zero-sized type from a dangling, aligned pointer reads no
    // memory; the value is valid by the function's contract.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// What `apply`'s input holds: the task's bound bytes, then its arguments.
pub(crate) type ApplyInput<F, Args> = (<F as Task<Args>>::Bound, Args);

/// Entry point for `apply`: `input` holds an [`ApplyInput`], `output`
/// receives the result.
///
/// # Safety
/// `io.input` points at a valid `ApplyInput<F, Args>`, `io.output` at
/// writable, aligned space for `F::Output`, and nothing else accesses either
/// during the call.
pub(crate) unsafe fn apply_entry<F: Task<Args>, Args: Pod>(
    io: TaskIo<'_>,
) -> Result<(), AccessRefused> {
    // SAFETY: by the contract, input holds an initialized ApplyInput written
    // by the parent.
    let (bound, args) = unsafe { io.input.cast::<ApplyInput<F, Args>>().read() };
    let result = F::call(&bound, args);
    crate::worker::fork_guard::check(); // a child the task forked writes nothing
                                        // SAFETY: output is aligned, writable, exclusive (contract).
    unsafe { io.output.cast::<F::Output>().write(result) };
    Ok(())
}

/// Entry point for a pool's initializer or a `Process`: calls the task and
/// drops the result.
///
/// # Safety
/// `io.input` points at a valid `ApplyInput<F, Args>`; `io.output` is not used.
pub(crate) unsafe fn init_entry<F: Task<Args>, Args: Pod>(
    io: TaskIo<'_>,
) -> Result<(), AccessRefused> {
    // SAFETY: by the contract, input holds an initialized ApplyInput written
    // by the parent.
    let (bound, args) = unsafe { io.input.cast::<ApplyInput<F, Args>>().read() };
    let _ = F::call(&bound, args);
    crate::worker::fork_guard::check(); // a child the task forked writes nothing
    Ok(())
}

/// Entry point for one `starmap` chunk: `output[i] = f(input[i]...)`.
///
/// # Safety
/// As for [`map_entry`], with `Args` tuples as input and `F::Output` as output.
pub(crate) unsafe fn starmap_entry<F: Task<Args>, Args: Pod>(
    io: TaskIo<'_>,
) -> Result<(), AccessRefused> {
    // SAFETY: the chunk's context holds F's bound bytes (contract).
    let bound = unsafe { F::unpack(io.context) };
    // SAFETY: forwarded contract.
    unsafe {
        for_each_piece::<Args, F::Output>(io, |input, output| {
            for (out, &args) in output.iter_mut().zip(input) {
                let y = F::call(&bound, args);
                crate::worker::fork_guard::check(); // a child the task forked writes nothing
                out.write(y);
            }
        })
    }
}

/// Entry point for one `map` chunk: `output[i] = f(input[i])` for `i < len`.
///
/// # Safety
/// A local side (`io.remote` does not name it) points at `len` initialized
/// `T`s (input) or aligned space for `len` outputs; a remote side is the
/// caller's address of the same, valid for the whole task. The two do not
/// overlap, and nothing else accesses them meanwhile. Unless `F` is
/// zero-sized, `io.context` holds `F`'s bound bytes.
pub(crate) unsafe fn map_entry<F: Task<(T,)>, T: Pod>(io: TaskIo<'_>) -> Result<(), AccessRefused> {
    // SAFETY: the chunk's context holds F's bound bytes (contract).
    let bound = unsafe { F::unpack(io.context) };
    // SAFETY: forwarded contract.
    unsafe {
        for_each_piece::<T, F::Output>(io, |input, output| {
            for (out, &x) in output.iter_mut().zip(input) {
                let y = F::call(&bound, (x,));
                crate::worker::fork_guard::check(); // a child the task forked writes nothing
                out.write(y);
            }
        })
    }
}

/// Entry point for one in-place chunk: `data[i] = f(data[i])` for `i < len`.
///
/// # Safety
/// `io.input` and `io.output` name the same `len` initialized, aligned `T`s
/// (local, or remote on both sides), which nothing else accesses meanwhile;
/// the context as for [`map_entry`].
pub(crate) unsafe fn inplace_entry<F, T>(io: TaskIo<'_>) -> Result<(), AccessRefused>
where
    F: Task<(T,), Output = T>,
    T: Pod,
{
    // SAFETY: the chunk's context holds F's bound bytes (contract).
    let bound = unsafe { F::unpack(io.context) };
    if io.remote.is_some() {
        // Staged: the piece is read into one buffer and mapped into another,
        // so nothing aliases.
        // SAFETY: forwarded contract (both sides remote, the same range).
        return unsafe {
            for_each_piece::<T, T>(io, |input, output| {
                for (out, &x) in output.iter_mut().zip(input) {
                    let y = F::call(&bound, (x,));
                    crate::worker::fork_guard::check(); // a child the task forked writes nothing
                    out.write(y);
                }
            })
        };
    }
    // SAFETY: by the contract, `len` initialized T's, exclusively ours.
    let data = unsafe { std::slice::from_raw_parts_mut(io.input.cast_mut().cast::<T>(), io.len) };
    for x in data {
        let y = F::call(&bound, (*x,));
        crate::worker::fork_guard::check(); // a child the task forked writes nothing
        *x = y;
    }
    Ok(())
}

/// What a `map_reduce` chunk carries: the map's and the fold's bounds.
pub(crate) type ReduceBounds<F, O, T, U> = (<F as Task<(T,)>>::Bound, <O as Task<(U, U)>>::Bound);

/// The context bytes of a `map_reduce`: the map's packed bound, then the
/// fold's.
pub(crate) fn reduce_context<F, O, T>(
    bounds: &ReduceBounds<F, O, T, F::Output>,
) -> Vec<MaybeUninit<u8>>
where
    F: Task<(T,)>,
    O: Task<(F::Output, F::Output), Output = F::Output>,
{
    let mut context = Vec::new();
    F::pack(&bounds.0, &mut context);
    O::pack(&bounds.1, &mut context);
    context
}

/// Entry point for one `map_reduce` chunk: folds `f(input[i])` with `op`, in
/// order, and writes the one result to `output`.
///
/// # Safety
/// As for [`map_entry`], with room for one output element; unless both tasks
/// are zero-sized, `io.context` holds their [`ReduceBounds`], packed
/// ([`reduce_context`]).
pub(crate) unsafe fn reduce_entry<F, O, T>(io: TaskIo<'_>) -> Result<(), AccessRefused>
where
    F: Task<(T,)>,
    O: Task<(F::Output, F::Output), Output = F::Output>,
    T: Pod,
{
    // SAFETY: the parent packed F's bound, then O's, at the start of the
    // context (contract, `reduce_context`).
    let (f_bound, op_bound) = unsafe {
        (
            F::unpack(io.context),
            O::unpack(io.context.get(F::PACKED..).unwrap_or(&[])),
        )
    };
    let output = io.output;
    let peer = io.remote.as_ref().filter(|r| r.output).map(|r| r.peer);
    // The fold reads pieces of input and writes nothing until the end.
    let reading = TaskIo {
        output: std::ptr::null_mut(),
        remote: io.remote.map(|r| Remote { output: false, ..r }),
        ..io
    };
    let mut acc: Option<F::Output> = None;
    // SAFETY: forwarded contract, with no output side; each piece holds `n`
    // initialized T's, aligned for them.
    unsafe {
        for_each_piece_raw(reading, size_of::<T>(), 0, |input, _, n| {
            let xs = std::slice::from_raw_parts(input.cast::<T>(), n);
            let mut xs = xs.iter();
            let mut a = match acc {
                Some(a) => a,
                None => match xs.next() {
                    Some(&x) => F::call(&f_bound, (x,)),
                    None => return,
                },
            };
            for &x in xs {
                a = O::call(&op_bound, (a, F::call(&f_bound, (x,))));
            }
            // A child the task forked leaves before the fold's value is
            // written (one check per piece: the value is written once, at
            // the end).
            crate::worker::fork_guard::check();
            acc = Some(a);
        })
    }?;
    let Some(acc) = acc else {
        return Ok(()); // no element: the parent sends no empty chunk
    };
    match peer {
        // SAFETY: `acc` is a live value of `size_of::<F::Output>()` bytes.
        Some(peer) => unsafe {
            peer.write(
                (&acc as *const F::Output).cast(),
                size_of::<F::Output>(),
                output as u64,
            )
        }
        .map_err(|errno| AccessRefused {
            errno,
            wrote: errno != libc::EPERM,
        }),
        None => {
            // SAFETY: room for one aligned output, ours alone (contract).
            unsafe { output.cast::<F::Output>().write(acc) };
            Ok(())
        }
    }
}

/// Runs `body` over a map task's elements: in one call when both sides are
/// local, else piece by piece through the worker's stage, each remote piece
/// read from the caller before `body` and written back to it after.
///
/// # Safety
/// As for [`map_entry`].
unsafe fn for_each_piece<T: Pod, U: Pod>(
    io: TaskIo<'_>,
    mut body: impl FnMut(&[T], &mut [MaybeUninit<U>]),
) -> Result<(), AccessRefused> {
    // SAFETY: forwarded contract; each piece holds `n` initialized T's and
    // room for `n` U's, aligned for them (the stage is aligned to 64, and the
    // parent stages no type aligned beyond that).
    unsafe {
        for_each_piece_raw(io, size_of::<T>(), size_of::<U>(), |input, output, n| {
            body(
                std::slice::from_raw_parts(input.cast::<T>(), n),
                std::slice::from_raw_parts_mut(output.cast::<MaybeUninit<U>>(), n),
            )
        })
    }
}

/// [`for_each_piece`] for elements of `in_size` and `out_size` bytes known
/// only at run time (the C API): `body(input, output, n)` gets pointers to
/// `n` input elements and room for `n` output elements.
///
/// # Safety
/// As for [`map_entry`], with elements of the given sizes.
pub(crate) unsafe fn for_each_piece_raw(
    io: TaskIo<'_>,
    in_size: usize,
    out_size: usize,
    mut body: impl FnMut(*const u8, *mut u8, usize),
) -> Result<(), AccessRefused> {
    let Some(remote) = io.remote else {
        crate::shared_alloc::populate_if_fresh(io.output, io.len.saturating_mul(out_size));
        body(io.input, io.output, io.len);
        return Ok(());
    };
    let piece = Stage::piece_len(in_size, out_size);
    let mut done = 0;
    while done < io.len {
        let n = piece.min(io.len - done);
        let (in_bytes, out_bytes) = (n * in_size, n * out_size);
        let (staged_in, staged_out) = remote.stage.buffers(in_bytes, out_bytes);
        let input = if remote.input {
            let at = io.input as u64 + (done * in_size) as u64;
            remote
                .peer
                .read(at, staged_in)
                .map_err(|errno| AccessRefused {
                    errno,
                    wrote: remote.output && done > 0,
                })?;
            staged_in.as_ptr()
        } else {
            io.input.wrapping_add(done * in_size)
        };
        let staged_out = staged_out.as_mut_ptr();
        let output = if remote.output {
            staged_out
        } else {
            io.output.wrapping_add(done * out_size)
        };
        body(input, output, n);
        if remote.output {
            let at = io.output as u64 + (done * out_size) as u64;
            // SAFETY: `body` wrote all `n` outputs (`out_bytes` bytes) there.
            unsafe { remote.peer.write(staged_out, out_bytes, at) }.map_err(|errno| {
                AccessRefused {
                    errno,
                    // A refusal comes before any byte moves; a fault may come
                    // after some did.
                    wrote: done > 0 || errno != libc::EPERM,
                }
            })?;
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: u64) -> u64 {
        x * x
    }

    #[test]
    fn entry_points_round_trip_through_their_offset() {
        fn entry_of<F: Task<(u64,), Output = u64>>(_: F) -> Entry {
            map_entry::<F, u64>
        }
        let entry = entry_of(square);
        let point = EntryPoint::new(entry);
        // SAFETY: made by EntryPoint::new in this process.
        let resolved = unsafe { FnCode(point.0).resolve::<Entry>() };
        assert_eq!(resolved as usize, entry as usize);
    }

    #[test]
    fn entries_call_the_function() {
        fn run<F: Task<(u64,)>>(f: F, x: u64) -> F::Output {
            let input: ApplyInput<F, (u64,)> = (f.bind().unwrap(), (x,));
            let mut out = MaybeUninit::<F::Output>::uninit();
            let io = TaskIo::local(
                (&input as *const ApplyInput<F, (u64,)>).cast(),
                out.as_mut_ptr().cast(),
                1,
            );
            // SAFETY: input holds an Args, output has room for the result.
            unsafe {
                apply_entry::<F, (u64,)>(io).unwrap();
                out.assume_init()
            }
        }
        assert_eq!(run(square, 12), 144);
        assert_eq!(run(|x: u64| x + 1, 41), 42);
    }

    #[test]
    fn map_entry_fills_every_output() {
        fn run<F: Task<(u32,), Output = f64>>(_: F, input: &[u32]) -> Vec<f64> {
            let mut out = vec![0.0; input.len()];
            let io = TaskIo::local(input.as_ptr().cast(), out.as_mut_ptr().cast(), input.len());
            // SAFETY: both buffers hold `len` elements and do not overlap.
            unsafe { map_entry::<F, u32>(io).unwrap() };
            out
        }
        assert_eq!(run(|x| f64::from(x) / 2.0, &[1, 2, 3]), vec![0.5, 1.0, 1.5]);
    }

    fn mix(v: [u64; 3]) -> [u32; 5] {
        [
            v[0] as u32,
            v[1] as u32,
            v[2] as u32,
            (v[0] ^ v[2]) as u32,
            7,
        ]
    }

    // A staged task reads and writes "the caller's" memory piece by piece;
    // this process stands in for the caller (a process may read itself).
    // Element sizes that do not divide the stage put piece boundaries
    // mid-chunk, in different places on the input and output side.
    #[test]
    #[cfg_attr(miri, ignore)] // process_vm_readv is a syscall
    fn staged_pieces_cover_every_element_and_no_other() {
        fn run<F: Task<([u64; 3],), Output = [u32; 5]>>(
            _: F,
            input: &[[u64; 3]],
            remote_in: bool,
            remote_out: bool,
        ) -> Vec<[u32; 5]> {
            // One element of guard on each side of the output.
            let mut out = vec![[u32::MAX; 5]; input.len() + 2];
            let mut stage = Stage::default();
            let io = TaskIo {
                input: input.as_ptr().cast(),
                output: out[1..].as_mut_ptr().cast(),
                len: input.len(),
                remote: Some(Remote {
                    peer: Peer {
                        pid: std::process::id() as libc::pid_t,
                    },
                    input: remote_in,
                    output: remote_out,
                    stage: &mut stage,
                }),
                context: &[],
                segment: std::ptr::null(),
            };
            // SAFETY: `input` holds len elements, `out[1..]` room for len
            // more; both stay borrowed here, and this process reaches itself.
            unsafe { map_entry::<F, [u64; 3]>(io).unwrap() };
            out
        }
        let piece = Stage::piece_len(24, 20);
        let input: Vec<[u64; 3]> = (0..3 * piece as u64 + 5).map(|i| [i, i * 3, !i]).collect();
        for (remote_in, remote_out) in [(true, true), (true, false), (false, true)] {
            let out = run(mix, &input, remote_in, remote_out);
            assert_eq!(out[0], [u32::MAX; 5]);
            assert_eq!(out[out.len() - 1], [u32::MAX; 5]);
            assert!(out[1..=input.len()]
                .iter()
                .zip(&input)
                .all(|(o, &x)| *o == mix(x)));
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)] // process_vm_readv is a syscall
    fn a_staged_read_of_unmapped_memory_is_refused_not_trusted() {
        let mut stage = Stage::default();
        let mut out = [0u64; 4];
        let io = TaskIo {
            input: 8 as *const u8, // never mapped
            output: out.as_mut_ptr().cast(),
            len: 4,
            remote: Some(Remote {
                peer: Peer {
                    pid: std::process::id() as libc::pid_t,
                },
                input: true,
                output: false,
                stage: &mut stage,
            }),
            context: &[],
            segment: std::ptr::null(),
        };
        fn id(x: u64) -> u64 {
            x
        }
        fn entry_of<F: Task<(u64,), Output = u64>>(_: F) -> Entry {
            map_entry::<F, u64>
        }
        // SAFETY: the input is remote (the kernel checks it); the output is ours.
        let refused = unsafe { entry_of(id)(io) }.unwrap_err();
        assert_eq!(refused.errno, libc::EFAULT);
        assert!(!refused.wrote);
        assert_eq!(out, [0; 4]);
    }
}
