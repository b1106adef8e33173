//! The MPI calls the pool makes, on raw bytes: headers, payloads that lie in
//! a caller's buffer, sends that complete in the background ([`Sending`]),
//! and a probe that waits without spinning a core.
//!
//! Waiting is polled (`MPI_Improbe`) with a backoff, not a blocking
//! `MPI_Mprobe`: Open MPI's blocking calls spin, and a rank spinning while its
//! local worker processes compute would take a CPU from them.

// Unsafe code: MPI's C interface: non-blocking sends and receives of raw buffers.
#![allow(unsafe_code)]

use mpi::datatype::{DynBufferMut, Equivalence};
use mpi::ffi;
use mpi::point_to_point::{Destination, Message, Source, Status};
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The world communicator of the job, used by one thread at a time.
pub(crate) struct Comm {
    world: SimpleCommunicator,
}

// SAFETY: MPI was initialized with at least MPI_THREAD_SERIALIZED (checked
// in `builder`), so any thread may make MPI calls as long as no two do at
// once; every `Comm` is owned by one thread or kept behind a `Mutex`.
unsafe impl Send for Comm {}

impl Comm {
    pub(crate) fn new(world: SimpleCommunicator) -> Comm {
        Comm { world }
    }

    pub(crate) fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    pub(crate) fn rank(&self) -> i32 {
        self.world.rank()
    }

    pub(crate) fn size(&self) -> i32 {
        self.world.size()
    }

    /// Sends a header (or an empty message for `&[]`) to `to`.
    pub(crate) fn send(&self, to: i32, tag: i32, bytes: &[u8]) {
        self.world.process_at_rank(to).send_with_tag(bytes, tag);
    }

    /// Starts sending the `len` bytes at `ptr` to `to` and returns at once
    /// (`MPI_Isend`): the caller goes on receiving while the receiver takes
    /// the bytes, so two ranks sending to each other never wait on each
    /// other.
    ///
    /// # Safety
    /// `ptr` points at `len` readable bytes (initialized or padding of `Pod`
    /// values: MPI copies them as they are, never reads them as Rust values),
    /// which stay valid and unchanged until the returned [`Sending`] is
    /// complete (it waits for that when dropped); `len` fits an MPI count.
    pub(crate) unsafe fn isend_raw(
        &self,
        to: i32,
        tag: i32,
        ptr: *const u8,
        len: usize,
    ) -> Sending {
        let mut request = MaybeUninit::<ffi::MPI_Request>::uninit();
        // MPI aborts the job on an error (its default handler) rather than
        // return without writing the request handle.
        // SAFETY: `len` bytes at `ptr` that outlive the request (contract);
        // live communicator and datatype; MPI writes the request it returns.
        let request = unsafe {
            ffi::MPI_Isend(
                ptr.cast(),
                len as i32,
                u8::equivalent_datatype().as_raw(),
                to,
                tag,
                self.world.as_raw(),
                request.as_mut_ptr(),
            );
            request.assume_init()
        };
        Sending {
            request,
            done: false,
            _owned: Vec::new(),
        }
    }

    /// [`isend_raw`](Self::isend_raw) of bytes the send itself keeps until
    /// it is complete; `bytes.len()` fits an MPI count.
    pub(crate) fn isend_owned(&self, to: i32, tag: i32, bytes: Vec<u8>) -> Sending {
        // SAFETY: the vector's buffer does not move when the vector moves
        // into the `Sending`, which keeps it until the send is complete (its
        // drop waits for that before its fields are dropped).
        let mut sending = unsafe { self.isend_raw(to, tag, bytes.as_ptr(), bytes.len()) };
        sending._owned = bytes;
        sending
    }

    /// The next message from `from` (any rank if `None`) with `tag` (any if
    /// `None`), if one has arrived.
    pub(crate) fn try_probe(
        &self,
        from: Option<i32>,
        tag: Option<i32>,
    ) -> Option<(Message, Status)> {
        match (from, tag) {
            (Some(r), Some(t)) => self
                .world
                .process_at_rank(r)
                .immediate_matched_probe_with_tag(t),
            (Some(r), None) => self.world.process_at_rank(r).immediate_matched_probe(),
            (None, Some(t)) => self.world.any_process().immediate_matched_probe_with_tag(t),
            (None, None) => self.world.any_process().immediate_matched_probe(),
        }
    }

    /// Waits for the next such message, with [`Backoff`].
    pub(crate) fn probe(&self, from: Option<i32>, tag: Option<i32>) -> (Message, Status) {
        let mut backoff = Backoff::new();
        loop {
            if let Some(found) = self.try_probe(from, tag) {
                return found;
            }
            backoff.snooze();
        }
    }
}

/// A send in progress ([`Comm::isend_raw`]); its bytes are MPI's until
/// [`test`](Sending::test) says it is complete. Dropping it waits for that.
pub(crate) struct Sending {
    request: ffi::MPI_Request,
    done: bool,
    /// The bytes of an [`isend_owned`](Comm::isend_owned), freed only after
    /// `drop` waited for the send.
    _owned: Vec<u8>,
}

// SAFETY: an MPI request handle is an opaque value; like `Comm`, it is used
// by one thread at a time (MPI_THREAD_SERIALIZED).
unsafe impl Send for Sending {}

impl Sending {
    /// Whether the send is complete (the bytes are free again); progresses
    /// MPI.
    pub(crate) fn test(&mut self) -> bool {
        if !self.done {
            let mut flag = 0;
            // SAFETY: a request from MPI_Isend, not yet completed (`done`),
            // so not yet freed; MPI_Test frees it when it reports completion.
            unsafe { ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            self.done = flag != 0;
        }
        self.done
    }

    /// Waits until the send is complete, without spinning a core.
    pub(crate) fn wait(&mut self) {
        let mut backoff = Backoff::new();
        while !self.test() {
            backoff.snooze();
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        // The bytes may not be freed while MPI still reads them.
        self.wait();
    }
}

/// The message's length in bytes, as MPI counts it.
pub(crate) fn bytes_of(status: &Status) -> usize {
    usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(usize::MAX)
}

/// Receives `msg` if it holds exactly one `H` (a header); else receives and
/// drops it and says how long it was.
pub(crate) fn receive_header<H>(msg: Message, status: &Status) -> Result<H, usize>
where
    H: FromBytes + IntoBytes + Immutable + KnownLayout,
{
    let bytes = bytes_of(status);
    if bytes != size_of::<H>() {
        discard(msg, status);
        return Err(bytes);
    }
    let mut header = H::new_zeroed();
    msg.matched_receive_into(header.as_mut_bytes());
    Ok(header)
}

/// Receives `msg` into the `len` bytes at `ptr`; `len` was checked to be
/// the message's length.
///
/// # Safety
/// `ptr` points at `len` writable bytes that nothing else accesses until this
/// returns; `len` fits an MPI count.
pub(crate) unsafe fn receive_raw(msg: Message, ptr: *mut u8, len: usize) {
    let datatype = u8::equivalent_datatype();
    // SAFETY: `len` writable bytes at `ptr`, ours for the call (contract).
    let mut buf = unsafe { DynBufferMut::from_raw(ptr, len as i32, datatype) };
    msg.matched_receive_into(&mut buf);
}

/// Receives `msg` into a fresh vector of its own length (MPI's count, not a
/// length announced by the sender).
/// Receives `msg` into `buf`, which holds exactly its bytes.
pub(crate) fn receive_into(msg: Message, buf: &mut [u8]) {
    msg.matched_receive_into(buf);
}

pub(crate) fn receive_vec(msg: Message, status: &Status) -> Vec<u8> {
    let mut bytes = vec![0u8; bytes_of(status)];
    msg.matched_receive_into(&mut bytes[..]);
    bytes
}

/// Receives and drops a message nobody asked for.
pub(crate) fn discard(msg: Message, status: &Status) {
    drop(receive_vec(msg, status));
}

/// Waiting for a message: spin for [`SPIN`], then yield the CPU until
/// [`YIELD`], then sleep in steps that double from 10 µs up to 1 ms.
///
/// A message that comes within [`YIELD`] (an `apply`'s result, the next task
/// of a busy rank, the data after a header) is seen within a scheduler slice:
/// an `apply` round trip takes ~12 µs here; with yielding only to 60 µs it
/// took ~350 µs, most of it in sleeps overshot by the kernel's timer slack
/// (`docs/PERFORMANCE.md`, "MPI"). Yielding leaves the CPU to any process
/// that wants it, so a local worker on the same core loses little. An idle
/// rank costs about one wake-up per millisecond.
pub(crate) struct Backoff {
    start: Instant,
    sleep: Duration,
}

/// How long a wait spins before it yields.
const SPIN: Duration = Duration::from_micros(20);
/// How long a wait yields before it sleeps.
const YIELD: Duration = Duration::from_micros(300);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            start: Instant::now(),
            sleep: Duration::from_micros(10),
        }
    }

    pub(crate) fn snooze(&mut self) {
        let waited = self.start.elapsed();
        if waited < SPIN {
            std::hint::spin_loop();
        } else if waited < YIELD {
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.sleep);
            self.sleep = (self.sleep * 2).min(Duration::from_millis(1));
        }
    }
}
