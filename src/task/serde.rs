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

use crate::remote::AccessRefused;
use crate::task::{conjure, TaskIo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::mem::size_of;

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
/// Implemented for every function item and non-capturing closure taking up to
/// six serde values and returning one. You do not implement it yourself.
pub trait SerdeTask<Args>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output: Wire;
    #[doc(hidden)]
    fn call(self, args: Args) -> Self::Output;
}

macro_rules! impl_serde_task {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg),*> SerdeTask<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + Sync + 'static,
            Ret: Wire,
            $($arg: Wire,)*
        {
            type Output = Ret;
            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}
impl_serde_task!();
impl_serde_task!(A);
impl_serde_task!(A, B);
impl_serde_task!(A, B, C);
impl_serde_task!(A, B, C, D);
impl_serde_task!(A, B, C, D, E);
impl_serde_task!(A, B, C, D, E, G);

/// The parent's header at the start of a chunk's block.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InHeader {
    /// Bytes of encoded inputs after the header.
    pub(crate) in_bytes: u64,
    /// Bytes the worker may write after the output header.
    pub(crate) out_capacity: u64,
}

/// The worker's header at the start of a chunk's output area.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Entry point for a chunk of `map`: `(T,)` and `T` encode alike, so the
/// inputs are `T`s.
///
/// # Safety
/// `io.input` points at an [`InHeader`] followed by its `in_bytes` bytes,
/// `io.output` at an [`OutHeader`] followed by `out_capacity` writable bytes,
/// both local and for this call alone; `io.len` is the item count.
pub(crate) unsafe fn map_entry<F, T, U>(io: TaskIo<'_>) -> Result<(), AccessRefused>
where
    F: Fn(T) -> U + Copy,
    T: DeserializeOwned,
    U: Serialize,
{
    // SAFETY: F is the zero-sized task type the parent was called with.
    let f = unsafe { conjure::<F>() };
    // SAFETY: forwarded contract.
    unsafe { run_chunk::<T, U>(io, f) };
    Ok(())
}

/// Entry point for a chunk of `starmap`, or for `apply` (one item): the
/// inputs are `Args` tuples.
///
/// # Safety
/// As for [`map_entry`].
pub(crate) unsafe fn star_entry<F, Args>(io: TaskIo<'_>) -> Result<(), AccessRefused>
where
    F: SerdeTask<Args>,
    Args: DeserializeOwned,
{
    // SAFETY: F is the zero-sized task type the parent was called with.
    let f = unsafe { conjure::<F>() };
    // SAFETY: forwarded contract.
    unsafe { run_chunk::<Args, F::Output>(io, |args| f.call(args)) };
    Ok(())
}

/// Decodes each input, calls `f`, encodes each result; writes the output
/// header last.
///
/// # Safety
/// As for [`map_entry`].
unsafe fn run_chunk<T: DeserializeOwned, U: Serialize>(io: TaskIo<'_>, mut f: impl FnMut(T) -> U) {
    debug_assert!(io.remote.is_none(), "serde chunks lie in the segment");
    // SAFETY: the contract: a header the parent wrote (unaligned read).
    let header = unsafe { io.input.cast::<InHeader>().read_unaligned() };
    // SAFETY: the contract: `in_bytes` bytes after the header, then room for
    // `out_capacity` after the output header, disjoint, ours alone.
    let (mut input, output) = unsafe {
        (
            std::slice::from_raw_parts(io.input.add(IN_HEADER), header.in_bytes as usize),
            std::slice::from_raw_parts_mut(io.output.add(OUT_HEADER), header.out_capacity as usize),
        )
    };
    let write_header = |status: u32, count: usize, used: usize| {
        let header = OutHeader {
            status,
            count: count as u32,
            used: used as u64,
        };
        // SAFETY: the contract: room for the header at `io.output`.
        unsafe { io.output.cast::<OutHeader>().write_unaligned(header) };
    };
    let mut used = 0;
    for i in 0..io.len {
        let value = match postcard::take_from_bytes::<T>(input) {
            Ok((value, rest)) => {
                input = rest;
                value
            }
            Err(e) => {
                let message = format!(
                    "input {i} of the chunk does not decode as {}: {e}",
                    std::any::type_name::<T>()
                );
                let n = write_message(output, &message);
                return write_header(STATUS_BAD_INPUT, i, n);
            }
        };
        let result = f(value);
        match postcard::to_slice(&result, &mut output[used..]) {
            Ok(written) => used += written.len(),
            Err(postcard::Error::SerializeBufferFull) => {
                let size = postcard::serialize_with_flavor(
                    &result,
                    postcard::ser_flavors::Size::default(),
                )
                .unwrap_or(0);
                return write_header(STATUS_OVERFLOW, i, used.saturating_add(size));
            }
            Err(e) => {
                let message = format!(
                    "the result of input {i} ({}) cannot be encoded: {e}",
                    std::any::type_name::<U>()
                );
                let n = write_message(output, &message);
                return write_header(STATUS_UNENCODABLE, i, n);
            }
        }
    }
    write_header(STATUS_OK, io.len, used);
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

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

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

    /// Lays out a chunk as the parent does, in an 8-aligned buffer.
    fn chunk(inputs: &[String], capacity: usize) -> (Vec<u64>, usize) {
        let mut bytes = Vec::new();
        for s in inputs {
            postcard::serialize_with_flavor(s, VecFlavor(&mut bytes)).unwrap();
        }
        let out = (IN_HEADER + bytes.len()).next_multiple_of(64);
        let mut buf = vec![0u64; (out + OUT_HEADER + capacity).div_ceil(8)];
        let base = buf.as_mut_ptr().cast::<u8>();
        let header = InHeader {
            in_bytes: bytes.len() as u64,
            out_capacity: capacity as u64,
        };
        // SAFETY: the buffer holds the header and the bytes.
        unsafe {
            base.cast::<InHeader>().write(header);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(IN_HEADER), bytes.len());
        }
        (buf, out)
    }

    fn run<F: Fn(String) -> String + Copy>(
        _: F,
        inputs: &[String],
        capacity: usize,
    ) -> (OutHeader, Vec<u8>) {
        let (mut buf, out) = chunk(inputs, capacity);
        let base = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: laid out by `chunk`; the output area lies after the input.
        unsafe {
            let io = TaskIo::local(base, base.add(out), inputs.len());
            map_entry::<F, String, String>(io).unwrap();
            let header = base.add(out).cast::<OutHeader>().read();
            let area = std::slice::from_raw_parts(base.add(out + OUT_HEADER), capacity).to_vec();
            (header, area)
        }
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
        fn entry_of<F: Fn(String) -> String + Copy>(_: F) -> crate::task::Entry {
            map_entry::<F, String, String>
        }
        // Says it holds two items; the bytes end after the first.
        let (mut buf, out) = chunk(&["ok".to_string()], 256);
        let base = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: as in `run`; the count claims 2 items over 1 item's bytes.
        let (header, message) = unsafe {
            let io = TaskIo::local(base, base.add(out), 2);
            entry_of(shout)(io).unwrap();
            let header = base.add(out).cast::<OutHeader>().read();
            let message =
                std::slice::from_raw_parts(base.add(out + OUT_HEADER), header.used as usize);
            (header, String::from_utf8_lossy(message).into_owned())
        };
        assert_eq!(header.status, STATUS_BAD_INPUT);
        assert_eq!(header.count, 1);
        assert!(message.contains("input 1"), "{message}");
    }
}
