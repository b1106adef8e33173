//! The caller's memory, seen from a worker: how `map` over a plain slice
//! moves no element through shared memory.
//!
//! A worker reaches the parent's private memory with `process_vm_readv` and
//! `process_vm_writev`: it reads a piece of its chunk where the caller's slice
//! lies into a small buffer of its own (the [`Stage`]), runs the function on
//! it, and writes the results straight into the vector the caller gets back.
//! The parent only writes task descriptions. See `docs/ARCHITECTURE.md`,
//! "Zero-copy maps", for what this opens and how it fails.
//!
//! [`Peer`] (the parent, by pid), [`Stage`], [`probe`]. The parent's side (the
//! Yama grant, the probe word) is `pool::zero_copy`.

// Unsafe code: writes into the parent's memory (`process_vm_writev`).
#![allow(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes a worker stages per direction and piece: small enough that a piece
/// stays in the worker's L2 cache between the read, the function and the write,
/// large enough that the two syscalls per piece cost little. Measured in
/// `docs/PERFORMANCE.md`, "Zero-copy maps".
pub(crate) const STAGE_BYTES: usize = 128 << 10;

/// The largest element alignment a zero-copy map stages; larger ones go
/// through the arena.
pub(crate) const STAGE_ALIGN: usize = 64;

/// What the parent's probe word holds (`pool::zero_copy::probe_target`): a
/// worker that reads it back has reached the parent's private memory.
pub(crate) const PROBE_MAGIC: u64 = u64::from_le_bytes(*b"zerocopy");

/// A worker could not reach the caller's memory: the kernel refused
/// (`EPERM`: Yama scope 2 or 3, a seccomp filter, another user namespace) or
/// the range was not mapped (`EFAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessRefused {
    pub(crate) errno: i32,
    /// Whether part of the task's output was written before the refusal.
    pub(crate) wrote: bool,
}

/// The parent process, as seen from one of its workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) pid: libc::pid_t,
}

impl Peer {
    /// Fills `local` from the peer's address `remote`. Safe: the kernel
    /// writes only into `local`, which we borrow mutably, and checks the
    /// remote range itself.
    pub(crate) fn read(&self, remote: u64, local: &mut [u8]) -> Result<(), i32> {
        crate::sys::vm::read(self.pid, remote, local)
    }

    /// Copies `len` bytes at `local` to the peer's address `remote`.
    ///
    /// # Safety
    /// `local` is valid for reads of `len` bytes. If the peer is this process
    /// (tests do that), nothing else accesses `remote..remote + len` meanwhile.
    pub(crate) unsafe fn write(
        &self,
        local: *const u8,
        len: usize,
        remote: u64,
    ) -> Result<(), i32> {
        // SAFETY: `local` is valid for reads of `len` bytes, and the remote
        // range is not accessed meanwhile if the peer is this process (contract).
        unsafe { crate::sys::vm::write(self.pid, std::slice::from_raw_parts(local, len), remote) }
    }
}

/// Whether this worker can read and write the parent's memory: reads the
/// parent's probe word at `target` and writes it back unchanged.
pub(crate) fn probe(peer: Peer, target: u64) -> Result<(), i32> {
    let mut word = [0u8; 8];
    crate::sys::vm::read(peer.pid, target, &mut word)?;
    if u64::from_le_bytes(word) != PROBE_MAGIC {
        return Err(libc::EFAULT);
    }
    // SAFETY: a worker probes its parent, never itself; the probe word is
    // the parent's to give.
    unsafe { crate::sys::vm::write(peer.pid, &word, target) }
}

/// One cache line of staging buffer: keeps pieces aligned for any `Pod` type
/// up to [`STAGE_ALIGN`].
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const _: () = assert!(std::mem::align_of::<Line>() == STAGE_ALIGN);

/// A worker's two staging buffers (input and output pieces), kept for its
/// whole life so that each piece reuses warm, already-faulted memory.
#[derive(Default)]
pub(crate) struct Stage {
    input: Vec<Line>,
    output: Vec<Line>,
}

impl Stage {
    /// Elements per piece for inputs of `in_size` and outputs of `out_size`
    /// bytes: at least one, however large the elements.
    pub(crate) fn piece_len(in_size: usize, out_size: usize) -> usize {
        (STAGE_BYTES / in_size.max(out_size).max(1)).max(1)
    }

    /// Room for `in_bytes` of input and `out_bytes` of output, each aligned to
    /// [`STAGE_ALIGN`]; the bytes are whatever an earlier piece left.
    pub(crate) fn buffers(&mut self, in_bytes: usize, out_bytes: usize) -> (&mut [u8], &mut [u8]) {
        fn grow(buf: &mut Vec<Line>, bytes: usize) -> &mut [u8] {
            let lines = bytes.div_ceil(64).max(1);
            if buf.len() < lines {
                buf.resize(lines, Line([0; 64]));
            }
            &mut buf.as_mut_bytes()[..bytes]
        }
        (
            grow(&mut self.input, in_bytes),
            grow(&mut self.output, out_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hold_at_least_one_element_and_fit_the_stage_otherwise() {
        assert_eq!(Stage::piece_len(8, 8), STAGE_BYTES / 8);
        assert_eq!(Stage::piece_len(1, 24), STAGE_BYTES / 24);
        assert_eq!(Stage::piece_len(STAGE_BYTES * 3, 8), 1);
        assert_eq!(Stage::piece_len(0, 0), STAGE_BYTES);
    }

    #[test]
    fn stage_buffers_are_aligned_apart_and_grow_without_moving_back() {
        let mut stage = Stage::default();
        let (a, b) = stage.buffers(100, 3000);
        assert_eq!(a.as_ptr() as usize % STAGE_ALIGN, 0);
        assert_eq!(b.as_ptr() as usize % STAGE_ALIGN, 0);
        assert_eq!((a.len(), b.len()), (100, 3000));
        a.fill(1);
        b.fill(2);
        assert_eq!(a[99], 1);
        let (a2, b2) = stage.buffers(STAGE_BYTES, STAGE_BYTES);
        a2.fill(3);
        b2.fill(4);
        let a2 = a2.as_ptr();
        let (a3, _) = stage.buffers(10, 10);
        let a3 = a3.as_ptr();
        assert_eq!(a3, a2, "a smaller piece reuses the grown buffer");
    }
}
