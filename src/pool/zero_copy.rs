//! Workers that read and write the caller's own memory: how `map` over a plain
//! slice moves no element through shared memory.
//!
//! A worker reaches the parent's private memory with `process_vm_readv` and
//! `process_vm_writev`: it reads a piece of its chunk where the caller's slice
//! lies into a small buffer of its own (the [`Stage`]), runs the function on
//! it, and writes the results straight into the vector the caller gets back.
//! The parent only writes task descriptions. See `docs/ARCHITECTURE.md`,
//! "Zero-copy maps", for what this opens and how it fails.
//!
//! * Parent side: [`PtracerGrant`] lets the parent's descendants reach its
//!   memory (Yama's `PR_SET_PTRACER`) while a zero-copy pool lives;
//!   [`probe_target`] is what a new worker reads to find out whether the kernel
//!   lets it.
//! * Worker side: [`Peer`] (the parent, by pid), [`Stage`], [`probe`].

use crate::sync::fork_mutex::ForkMutex;
use std::sync::atomic::AtomicU64;

/// Bytes a worker stages per direction and piece: small enough that a piece
/// stays in the worker's L2 cache between the read, the function and the write,
/// large enough that the two syscalls per piece cost little. Measured in
/// `docs/PERFORMANCE.md`, "Zero-copy maps".
pub(crate) const STAGE_BYTES: usize = 128 << 10;

/// The largest element alignment a zero-copy map stages; larger ones go
/// through the arena.
pub(crate) const STAGE_ALIGN: usize = 64;

/// What [`probe_target`] holds: a worker that reads it back has reached the
/// parent's private memory.
const PROBE_MAGIC: u64 = u64::from_le_bytes(*b"zerocopy");

/// A word of the parent's private memory that new workers read and write back
/// unchanged, to find out whether the kernel lets them.
static PROBE_TARGET: AtomicU64 = AtomicU64::new(PROBE_MAGIC);

/// The address of the probe word in this process.
pub(crate) fn probe_target() -> u64 {
    PROBE_TARGET.as_ptr() as u64
}

/// `(pid, n)`: process `pid` has `n` pools holding a grant; the first sets the
/// tracer, the last clears it. A fork child inherits the count but neither
/// the pools nor the declaration (Yama keeps it per process), so it starts
/// again from zero; and a ForkMutex, since a parent thread may have held it at
/// the fork.
static GRANTS: ForkMutex<(u32, usize)> = ForkMutex::new((0, 0));

/// While it lives, this process's descendants may read and write its memory
/// under Yama's `ptrace_scope=1` (`prctl(PR_SET_PTRACER, getpid())`). Yama keeps
/// one declared tracer per process: the first grant replaces any tracer the
/// program declared itself, and the last one to go clears it
/// (`PR_SET_PTRACER, 0`), since the old value cannot be read back.
#[derive(Debug)]
pub(crate) struct PtracerGrant(());

impl PtracerGrant {
    pub(crate) fn acquire() -> PtracerGrant {
        let mut grants = GRANTS.lock();
        let me = std::process::id();
        if grants.0 != me {
            *grants = (me, 0);
        }
        if grants.1 == 0 {
            // SAFETY: PR_SET_PTRACER takes a pid and changes no memory; it fails
            // with EINVAL where Yama is not built in, and then nothing is needed.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PTRACER,
                    libc::getpid() as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
        }
        grants.1 += 1;
        PtracerGrant(())
    }
}

impl Drop for PtracerGrant {
    fn drop(&mut self) {
        let mut grants = GRANTS.lock();
        if grants.0 != std::process::id() {
            return; // a grant of the process this one was forked from
        }
        grants.1 -= 1;
        if grants.1 == 0 {
            // SAFETY: as in `acquire`; 0 withdraws the declaration.
            unsafe { libc::prctl(libc::PR_SET_PTRACER, 0, 0, 0, 0) };
        }
    }
}

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
    /// Copies `len` bytes from the peer's address `remote` to `local`.
    ///
    /// # Safety
    /// `local` is valid for writes of `len` bytes, and nothing else accesses
    /// them meanwhile.
    pub(crate) unsafe fn read(&self, remote: u64, local: *mut u8, len: usize) -> Result<(), i32> {
        let local_iov = libc::iovec {
            iov_base: local.cast(),
            iov_len: len,
        };
        let remote_iov = libc::iovec {
            iov_base: remote as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the local iovec is writable (contract); the kernel checks the
        // remote range itself (EFAULT if unmapped).
        let n = unsafe { libc::process_vm_readv(self.pid, &local_iov, 1, &remote_iov, 1, 0) };
        transferred(n, len)
    }

    /// Copies `len` bytes at `local` to the peer's address `remote`.
    ///
    /// # Safety
    /// `local` is valid for reads of `len` bytes.
    pub(crate) unsafe fn write(
        &self,
        local: *const u8,
        len: usize,
        remote: u64,
    ) -> Result<(), i32> {
        let local_iov = libc::iovec {
            iov_base: local.cast_mut().cast(),
            iov_len: len,
        };
        let remote_iov = libc::iovec {
            iov_base: remote as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the kernel only reads the local iovec, readable by the
        // contract; it checks the remote range itself.
        let n = unsafe { libc::process_vm_writev(self.pid, &local_iov, 1, &remote_iov, 1, 0) };
        transferred(n, len)
    }
}

/// A whole transfer is `Ok`; a short one means part of the range was not
/// mapped (the kernel stops at the first fault).
fn transferred(n: isize, wanted: usize) -> Result<(), i32> {
    match n {
        -1 => Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)),
        n if n as usize == wanted => Ok(()),
        _ => Err(libc::EFAULT),
    }
}

/// Whether this worker can read and write the parent's memory: reads the
/// parent's probe word at `target` and writes it back unchanged.
pub(crate) fn probe(peer: Peer, target: u64) -> Result<(), i32> {
    let mut word = [0u8; 8];
    // SAFETY: `word` is ours, 8 bytes.
    unsafe { peer.read(target, word.as_mut_ptr(), 8) }?;
    if u64::from_le_bytes(word) != PROBE_MAGIC {
        return Err(libc::EFAULT);
    }
    // SAFETY: as above.
    unsafe { peer.write(word.as_ptr(), 8, target) }
}

/// One cache line of staging buffer: keeps pieces aligned for any `Pod` type
/// up to [`STAGE_ALIGN`].
#[derive(Clone, Copy)]
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
    pub(crate) fn buffers(&mut self, in_bytes: usize, out_bytes: usize) -> (*mut u8, *mut u8) {
        fn grow(buf: &mut Vec<Line>, bytes: usize) -> *mut u8 {
            let lines = bytes.div_ceil(64).max(1);
            if buf.len() < lines {
                buf.resize(lines, Line([0; 64]));
            }
            buf.as_mut_ptr().cast()
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
        assert_eq!(a as usize % STAGE_ALIGN, 0);
        assert_eq!(b as usize % STAGE_ALIGN, 0);
        // SAFETY: both buffers hold the bytes asked for and do not overlap
        // (separate allocations); writing them checks that under miri.
        unsafe {
            a.write_bytes(1, 100);
            b.write_bytes(2, 3000);
            assert_eq!(*a.add(99), 1);
        }
        let (a2, b2) = stage.buffers(STAGE_BYTES, STAGE_BYTES);
        // SAFETY: as above, larger.
        unsafe {
            a2.write_bytes(3, STAGE_BYTES);
            b2.write_bytes(4, STAGE_BYTES);
        }
        let (a3, _) = stage.buffers(10, 10);
        assert_eq!(a3, a2, "a smaller piece reuses the grown buffer");
    }
}
