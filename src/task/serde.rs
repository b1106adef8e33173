//! Tasks over any serde value (`Pool::serde`): the wire format of one chunk
//! in the pool's shared memory, and the entry points that run it in a worker.
//!
//! A chunk is one arena block, laid out by the parent:
//!
//! ```text
//! 0          InHeader { in_bytes, out_capacity }       written by the parent
//! 16         the inputs: postcard encodings, back to back (in_bytes bytes)
//! out        OutHeader { status, count, used }         written by the worker
//! out + 64   the results: postcard encodings, back to back (out_capacity bytes)
//! ```
//!
//! Postcard needs no length prefix to find where one value ends, so items
//! are simply concatenated and taken one after the other. The worker decodes
//! each input, calls the function and encodes the result straight into the
//! output area; it writes the header last. The parent trusts nothing the
//! worker wrote: the header's count and byte length are checked against the
//! area the parent itself reserved (`pool::serde`).

// Unsafe code: serde chunks' raw blocks; functions from code offsets.
#![allow(unsafe_code)]

use super::{conjure, FnCode, Partial, TaskIo};
use crate::error::Error;
use crate::remote::AccessRefused;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// What a [`SerdeTask`] can take and return: any serde value that can travel
/// to another process and back.
///
/// Implemented for every `T: Serialize + DeserializeOwned + Send + 'static`
/// (`String`, `Vec<T>`, `HashMap`, tuples, your own `#[derive(Serialize,
/// Deserialize)]` types). You do not implement it yourself.
pub trait Wire: Serialize + DeserializeOwned + 'static {}
impl<T: Serialize + DeserializeOwned + 'static> Wire for T {}

/// A function a pool's [`serde`](crate::Pool::serde) view can run with
/// arguments `Args`, a tuple of serde values.
///
/// Implemented for every function item, non-capturing closure and `fn`
/// pointer taking up to six serde values and returning one, and for
/// [`Partial`] with a serde bound value (`partial(f, value)`: `f(value, x,
/// ..)`). You do not implement it yourself. A closure's argument types must
/// be written out (`|s: String| s.len()`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run in a worker process as a serde task taking `{Args}`",
    label = "not a serde task taking `{Args}`",
    note = "a serde task is a function item, a `fn` pointer, a non-capturing closure with its argument types written out (`|s: String| s.len()`), or `shmpool::partial(f, value)`, taking and returning `Serialize + DeserializeOwned` values"
)]
#[cfg_attr(
    feature = "manager",
    diagnostic::on_unimplemented(
        note = "for a Manager proxy (`DictProxy`, `QueueProxy`, ...), as an argument or bound by `partial`, pass `proxy.borrowed()` and take a `shmpool::manager::Borrowed<...>` in the task"
    )
)]
pub trait SerdeTask<Args>: Send + Sync + 'static {
    /// What the function returns.
    type Output: Wire;
    /// What travels with each chunk besides the arguments: the function's
    /// code (for a `fn` pointer) and a [`Partial`]'s bound value.
    #[doc(hidden)]
    type Bound: Wire;
    /// As [`Task::TRAVELS`](crate::Task): fails to evaluate for a closure
    /// that captures variables.
    #[doc(hidden)]
    const TRAVELS: () = ();
    /// In the parent: checks that the task can travel and encodes it.
    #[doc(hidden)]
    fn bind(&self) -> Result<Self::Bound, Error>;
    /// In the worker: calls the task.
    #[doc(hidden)]
    fn call(bound: &Self::Bound, args: Args) -> Self::Output;
}

macro_rules! impl_serde_task {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg),*> SerdeTask<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + crate::task::TaskFunction,
            Ret: Wire,
            $($arg: Wire,)*
        {
            type Output = Ret;
            /// The code offset of a `fn` pointer ([`FnCode`]); 0 for a
            /// function item.
            type Bound = u64;
            const TRAVELS: () = crate::task::assert_travels::<Func>();

            fn bind(&self) -> Result<u64, Error> {
                #[allow(clippy::let_unit_value)]
                let () = Self::TRAVELS;
                FnCode::of(self, |p: &fn($($arg),*) -> Ret| *p as usize).map(|code| code.0)
            }

            #[allow(non_snake_case)]
            fn call(code: &u64, ($($arg,)*): ($($arg,)*)) -> Ret {
                if size_of::<Func>() == 0 {
                    // SAFETY: a zero-sized function type the parent was given
                    // a value of (`bind` ran there).
                    let f = unsafe { conjure::<Func>() };
                    f($($arg),*)
                } else {
                    // SAFETY: `bind` encoded a `fn` pointer of exactly this
                    // type (it checks the type), in the parent.
                    let f = unsafe { FnCode(*code).resolve::<fn($($arg),*) -> Ret>() };
                    f($($arg),*)
                }
            }
        }
    };
}
crate::pod::for_each_arity!(impl_serde_task: A, B, C, D, E, G);

macro_rules! impl_serde_partial {
    ($($arg:ident),*) => {
        impl<F, V, $($arg),*> SerdeTask<($($arg,)*)> for Partial<F, V>
        where
            F: SerdeTask<(V, $($arg,)*)>,
            V: Wire + Clone + Send + Sync,
            $($arg: Wire,)*
        {
            type Output = F::Output;
            type Bound = (F::Bound, V);
            const TRAVELS: () = F::TRAVELS;

            fn bind(&self) -> Result<Self::Bound, Error> {
                Ok((self.f.bind()?, self.bound.clone()))
            }

            #[allow(non_snake_case)]
            fn call(bound: &Self::Bound, ($($arg,)*): ($($arg,)*)) -> Self::Output {
                // Each call gets its own copy, as each call of Python's
                // `functools.partial` gets the same object.
                F::call(&bound.0, (bound.1.clone(), $($arg,)*))
            }
        }
    };
}
crate::pod::for_each_arity!(impl_serde_partial: A, C, D, E, G);

/// The parent's header at the start of a chunk's block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct InHeader {
    /// Bytes of encoded inputs after the header.
    pub(crate) in_bytes: u64,
    /// Bytes the worker may write after the output header.
    pub(crate) out_capacity: u64,
}

/// The worker's header at the start of a chunk's output area.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct OutHeader {
    /// One of the `STATUS_*` values.
    pub(crate) status: u32,
    /// Results encoded (`STATUS_OK`: all of them).
    pub(crate) count: u32,
    /// Bytes used after the header (`STATUS_OVERFLOW`: at least this many
    /// would have been needed; a failure: the message's length).
    pub(crate) used: u64,
}

pub(crate) const IN_HEADER: usize = size_of::<InHeader>();
/// Bytes before the results: the [`OutHeader`], padded to a cache line (so
/// the room for results is what the parent asked for, rounded to 64).
pub(crate) const OUT_HEADER: usize = 64;
const _: () = assert!(size_of::<OutHeader>() <= OUT_HEADER);

/// Every result was encoded.
pub(crate) const STATUS_OK: u32 = 0x5e7d_0001;
/// A result did not fit the output area; `used` holds a lower bound of the
/// bytes needed.
pub(crate) const STATUS_OVERFLOW: u32 = 0x5e7d_0002;
/// An input did not decode; the area holds a message.
pub(crate) const STATUS_BAD_INPUT: u32 = 0x5e7d_0003;
/// A result could not be encoded (its `Serialize` failed); the area holds a
/// message.
pub(crate) const STATUS_UNENCODABLE: u32 = 0x5e7d_0004;

/// Entry point for a chunk of `map`, `starmap` or `apply` (one item): the
/// chunk's inputs are the task's bound value, then `Args` tuples (a `map`'s
/// `T`s are encoded as `(T,)`, which postcard encodes alike).
///
/// # Safety
/// `io.input` points at an [`InHeader`] followed by its `in_bytes` bytes,
/// `io.output` at an [`OutHeader`] followed by `out_capacity` writable bytes,
/// both local and for this call alone; `io.len` is the item count.
pub(crate) unsafe fn entry<F, Args>(io: TaskIo<'_>) -> Result<(), AccessRefused>
where
    F: SerdeTask<Args>,
    Args: DeserializeOwned,
{
    debug_assert!(io.remote.is_none(), "serde chunks lie in the segment");
    // SAFETY: the block the parent laid out (contract): its header
    // (read unaligned), `in_bytes` bytes after it; the output header and
    // room for `out_capacity` bytes after that, disjoint, ours alone.
    let (input, output) = unsafe {
        let header = io.input.cast::<InHeader>().read_unaligned();
        (
            std::slice::from_raw_parts(io.input.add(IN_HEADER), header.in_bytes as usize),
            std::slice::from_raw_parts_mut(io.output, OUT_HEADER + header.out_capacity as usize),
        )
    };
    let (out_header, area) = output.split_at_mut(OUT_HEADER);
    let (status, count, used) = run_chunk::<F, Args>(input, area, io.len);
    let header = OutHeader {
        status,
        count: count as u32,
        used: used as u64,
    };
    // Written last.
    out_header[..size_of::<OutHeader>()].copy_from_slice(header.as_bytes());
    Ok(())
}

/// Decodes the bound value and each input, calls the task, encodes each
/// result into `output`; returns the header's `(status, count, used)`.
fn run_chunk<F: SerdeTask<Args>, Args: DeserializeOwned>(
    input: &[u8],
    output: &mut [u8],
    len: usize,
) -> (u32, usize, usize) {
    let (bound, mut input) = match postcard::take_from_bytes::<F::Bound>(input) {
        Ok(taken) => taken,
        Err(e) => {
            let message = format!(
                "the task's bound value does not decode as {}: {e}",
                std::any::type_name::<F::Bound>()
            );
            return (STATUS_BAD_INPUT, 0, write_message(output, &message));
        }
    };
    let mut used = 0;
    for i in 0..len {
        let args = match postcard::take_from_bytes::<Args>(input) {
            Ok((args, rest)) => {
                input = rest;
                args
            }
            Err(e) => {
                let message = format!(
                    "input {i} of the chunk does not decode as {}: {e}",
                    std::any::type_name::<Args>()
                );
                return (STATUS_BAD_INPUT, i, write_message(output, &message));
            }
        };
        let result = F::call(&bound, args);
        crate::worker::fork_guard::check(); // a child the task forked writes nothing
        match postcard::to_slice(&result, &mut output[used..]) {
            Ok(written) => used += written.len(),
            Err(postcard::Error::SerializeBufferFull) => {
                let size = postcard::serialize_with_flavor(
                    &result,
                    postcard::ser_flavors::Size::default(),
                )
                .unwrap_or(0);
                return (STATUS_OVERFLOW, i, used.saturating_add(size));
            }
            Err(e) => {
                let message = format!(
                    "the result of input {i} ({}) cannot be encoded: {e}",
                    std::any::type_name::<F::Output>()
                );
                return (STATUS_UNENCODABLE, i, write_message(output, &message));
            }
        }
    }
    (STATUS_OK, len, used)
}

/// Writes as much of `message` as fits into `area`; returns its length.
fn write_message(area: &mut [u8], message: &str) -> usize {
    let n = message.len().min(area.len()).min(MAX_MESSAGE);
    area[..n].copy_from_slice(&message.as_bytes()[..n]);
    n
}

/// The longest failure message a worker writes (and a parent reads).
pub(crate) const MAX_MESSAGE: usize = 1024;

/// Encodes values into a `Vec<u8>` (postcard's own `Vec` flavor needs its
/// `alloc` feature and pushes byte by byte).
pub(crate) struct VecFlavor<'a>(pub(crate) &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shout(s: String) -> String {
        s.to_uppercase()
    }

    /// Lays out a chunk of a function item as the parent does (its bound
    /// value, 0, first), in an 8-aligned buffer.
    fn chunk(inputs: &[String], capacity: usize) -> (Vec<u64>, usize) {
        let mut bytes = Vec::new();
        postcard::serialize_with_flavor(&0u64, VecFlavor(&mut bytes)).unwrap();
        for s in inputs {
            postcard::serialize_with_flavor(s, VecFlavor(&mut bytes)).unwrap();
        }
        let out = (IN_HEADER + bytes.len()).next_multiple_of(64);
        let mut buf = vec![0u64; (out + OUT_HEADER + capacity).div_ceil(8)];
        let header = InHeader {
            in_bytes: bytes.len() as u64,
            out_capacity: capacity as u64,
        };
        let area = buf.as_mut_bytes();
        area[..IN_HEADER].copy_from_slice(header.as_bytes());
        area[IN_HEADER..][..bytes.len()].copy_from_slice(&bytes);
        (buf, out)
    }

    /// The output header and the `len` bytes after it, as the worker left
    /// them in a buffer `chunk` laid out.
    fn output(buf: &[u64], out: usize, len: usize) -> (OutHeader, Vec<u8>) {
        let bytes = &buf.as_bytes()[out..];
        let (header, _) = OutHeader::read_from_prefix(bytes).unwrap();
        (header, bytes[OUT_HEADER..][..len].to_vec())
    }

    fn run<F: SerdeTask<(String,), Output = String>>(
        _: F,
        inputs: &[String],
        capacity: usize,
    ) -> (OutHeader, Vec<u8>) {
        let (mut buf, out) = chunk(inputs, capacity);
        let base = buf.as_mut_ptr().cast::<u8>();
        let io = TaskIo::local(base, base.wrapping_add(out), inputs.len());
        // SAFETY: laid out by `chunk`; the output area lies after the input.
        unsafe { entry::<F, (String,)>(io).unwrap() };
        output(&buf, out, capacity)
    }

    #[test]
    fn a_chunk_decodes_calls_and_encodes_every_item() {
        let inputs = vec!["ab".to_string(), String::new(), "é".repeat(100)];
        let (header, area) = run(shout, &inputs, 1 << 10);
        assert_eq!((header.status, header.count), (STATUS_OK, 3));
        let mut rest = &area[..header.used as usize];
        for s in &inputs {
            let (got, r) = postcard::take_from_bytes::<String>(rest).unwrap();
            assert_eq!(got, shout(s.clone()));
            rest = r;
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn a_result_too_large_for_the_area_says_how_much_it_needs() {
        let inputs = vec!["x".repeat(10), "y".repeat(1000)];
        let (header, _) = run(shout, &inputs, 100);
        assert_eq!((header.status, header.count), (STATUS_OVERFLOW, 1));
        assert_eq!(
            header.used,
            11 + 1002,
            "both results, with their varint lengths"
        );
    }

    #[test]
    fn an_input_that_does_not_decode_is_reported_not_run() {
        fn entry_of<F: SerdeTask<(String,)>>(_: F) -> crate::task::Entry {
            entry::<F, (String,)>
        }
        // Says it holds two items; the bytes end after the first.
        let (mut buf, out) = chunk(&["ok".to_string()], 256);
        let base = buf.as_mut_ptr().cast::<u8>();
        let io = TaskIo::local(base, base.wrapping_add(out), 2);
        // SAFETY: as in `run`; the count claims 2 items over 1 item's bytes.
        unsafe { entry_of(shout)(io).unwrap() };
        let (header, message) = output(&buf, out, 256);
        let message = String::from_utf8_lossy(&message[..header.used as usize]).into_owned();
        assert_eq!(header.status, STATUS_BAD_INPUT);
        assert_eq!(header.count, 1);
        assert!(message.contains("input 1"), "{message}");
    }
}
