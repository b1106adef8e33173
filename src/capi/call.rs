//! How a C function travels to a worker: as a code offset in a call
//! description that the parent writes into each chunk's slot, read by one
//! entry point, [`c_entry`].

// Unsafe code: C functions reached through code offsets, called on raw chunk data.
#![allow(unsafe_code)]

use crate::remote::AccessRefused;
use crate::task::{code_at, for_each_piece_raw, TaskIo};
use std::ffi::c_void;
use zerocopy::FromBytes;

/// `void f(const void *in, void *out, const void *ctx)`, once per element.
pub(crate) type ElementFn = unsafe extern "C" fn(*const c_void, *mut c_void, *const c_void);
/// `double f(double)`, once per element.
pub(crate) type F64Fn = unsafe extern "C" fn(f64) -> f64;

/// [`CallDesc::kind`]: the function is an [`ElementFn`].
pub(crate) const ELEMENT: u32 = 0;
/// [`CallDesc::kind`]: the function is an [`F64Fn`] over `f64`s.
pub(crate) const F64: u32 = 1;

/// One C map call, as every chunk's slot carries it inline: written by the
/// parent before the chunk is published, read-only afterwards.
#[repr(C)]
#[derive(Debug, Clone, Copy, zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)]
pub(crate) struct CallDesc {
    /// [`ELEMENT`] or [`F64`].
    pub(crate) kind: u32,
    pub(crate) _pad: u32,
    /// The C function, as a code offset (`task::code_offset`).
    pub(crate) function: u64,
    pub(crate) in_size: u64,
    pub(crate) out_size: u64,
    /// Segment offset of the call's context bytes (0 with none).
    pub(crate) ctx: u64,
    pub(crate) ctx_len: u64,
}

impl CallDesc {
    pub(crate) fn as_bytes(&self) -> &[std::mem::MaybeUninit<u8>] {
        crate::pod::bytes_of(self)
    }
}

/// The entry point of every C map chunk: calls the C function of the chunk's
/// [`CallDesc`] on each element.
///
/// # Safety
/// As for `task::map_entry`, with the elements `io.context`'s [`CallDesc`]
/// describes; `io.context` and `io.segment` are this worker's views of the
/// chunk's slot and of the segment; the parent checked that the function
/// lies in this binary (fork: any address of the parent's, which is ours).
pub(crate) unsafe fn c_entry(io: TaskIo<'_>) -> Result<(), AccessRefused> {
    // The parent wrote a CallDesc at the start of the slot's inline bytes
    // before publishing the chunk (contract); any bytes are one.
    let Ok((call, _)) = CallDesc::read_from_prefix(io.context) else {
        unreachable!("a slot's inline bytes hold a CallDesc");
    };
    let ctx: *const c_void = if call.ctx_len == 0 {
        std::ptr::null()
    } else {
        io.segment.wrapping_add(call.ctx as usize).cast()
    };
    let function = code_at(call.function);
    // SAFETY: the parent encoded a function of this binary of the kind the
    // description names (contract).
    let (kernel, in_size, out_size) = unsafe {
        if call.kind == F64 {
            (
                Kernel::F64(std::mem::transmute::<usize, F64Fn>(function)),
                8,
                8,
            )
        } else {
            let f = std::mem::transmute::<usize, ElementFn>(function);
            (
                Kernel::Element(f),
                call.in_size as usize,
                call.out_size as usize,
            )
        }
    };
    // SAFETY: forwarded contract; each piece holds `n` elements of these
    // sizes (f64 pieces 8-byte aligned).
    unsafe {
        for_each_piece_raw(io, in_size, out_size, |input, output, n| match kernel {
            Kernel::F64(f) => {
                let (input, output) = (input.cast::<f64>(), output.cast::<f64>());
                for i in 0..n {
                    let y = f(input.add(i).read());
                    crate::worker::fork_guard::check(); // a child the task forked writes nothing
                    output.add(i).write(y);
                }
            }
            Kernel::Element(f) => {
                for i in 0..n {
                    f(
                        input.add(i * in_size).cast(),
                        output.add(i * out_size).cast(),
                        ctx,
                    );
                    // A child `f` forked goes no further (what `f` itself
                    // wrote before returning is its own doing).
                    crate::worker::fork_guard::check();
                }
            }
        })
    }
}

/// The C function of a chunk, by its kind.
#[derive(Clone, Copy)]
enum Kernel {
    F64(F64Fn),
    Element(ElementFn),
}
