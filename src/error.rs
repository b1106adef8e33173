//! The crate's one error type.

use std::fmt;
use std::ops::Range;

/// Everything that can go wrong when using a pool.
///
/// Each variant names a situation the caller can act on. The enum is
/// `#[non_exhaustive]`: match the variants you handle and keep a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The caller stopped waiting: the result did not arrive within the time
    /// given to [`AsyncResult::get`](crate::AsyncResult::get),
    /// [`Imap::next_timeout`](crate::Imap::next_timeout), a queue, lock or
    /// process wait (like Python's `multiprocessing.TimeoutError`). The task,
    /// if any, keeps running.
    Timeout,
    /// The task ran longer than the pool's
    /// [`task_timeout`](crate::PoolBuilder::task_timeout) and was killed with
    /// its worker, which the pool replaced. It will not finish.
    TaskTimedOut {
        /// From a map: the input elements the killed chunk covered (indexes
        /// into the map's input); `None` for `apply`. See
        /// [`Error::elements`].
        elements: Option<Range<usize>>,
    },
    /// The task panicked in its worker. The worker caught the panic and goes on
    /// serving tasks. `message` is the panic's message, which it derefs to
    /// and compares equal with, as the `String` it once was; it also says
    /// where the panic was raised ([`PanicMessage::location`]). From a map,
    /// [`Error::elements`] names the input elements of the chunk that
    /// panicked.
    TaskPanicked {
        /// The panic's message and location.
        message: PanicMessage,
    },
    /// The worker running the task died (killed by a signal, `abort()`, or an
    /// `exit()` from inside the task). The pool has replaced it.
    WorkerDied {
        /// The dead worker's process id.
        pid: u32,
        /// The signal that killed it, or `None` if it exited.
        signal: Option<i32>,
        /// From a map: the input elements the dead worker's chunk covered
        /// (indexes into the map's input); `None` for `apply`. See
        /// [`Error::elements`].
        elements: Option<Range<usize>>,
        /// Whether it died of memory, as far as the pool can tell.
        cause: DeathCause,
    },
    /// The pool no longer accepts work: it was closed or terminated.
    Closed,
    /// The pool was terminated (or dropped) before this task finished.
    Terminated,
    /// The input iterator given to an `imap` panicked, in the caller's
    /// process. The [`Imap`](crate::Imap) yielded the results of the items
    /// before it first, then this error, and then ends.
    InputPanicked {
        /// The panic payload, if it was a string.
        message: String,
    },
    /// The pool's supervisor thread panicked (a bug in shmpool): its workers
    /// were killed, every unfinished task failed with this error, and the
    /// pool accepts no more work. The string says what the panic said.
    PoolBroken(String),
    /// The pool's initializer panicked in a worker, so
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) failed; no worker is
    /// left running.
    InitializerFailed {
        /// The initializer's panic message (or how the worker ended).
        message: String,
    },
    /// A success or error callback (given to an `*_async_with` method) panicked
    /// in the pool's callback thread. The task itself finished; the callback
    /// thread caught the panic and goes on delivering other results.
    CallbackPanicked {
        /// The callback's panic message.
        message: String,
    },
    /// A worker process could not be started (a spawned or forkserver worker
    /// that did not report in, or a binary that does not match this one).
    StartFailed(String),
    /// A process holding a shared [`Lock`](crate::Lock) (or the lock inside a
    /// [`Queue`](crate::Queue), [`Value`](crate::Value), …) died while holding
    /// it. The lock has been released and made usable again; data it guarded
    /// may be half-updated.
    OwnerDied,
    /// A [`Queue`](crate::Queue) or [`Pipe`](crate::Pipe) end waited, without
    /// a timeout, for a message, but every other process of the program is
    /// gone and this process has no other thread (but shmpool's own), so none
    /// can come (where Python would wait forever). Also: a manager proxy's server
    /// has stopped or died (its connection closed, or nothing listens).
    PeersGone,
    /// A [`Barrier`](crate::Barrier) was broken: a waiter timed out or
    /// [`abort`](crate::Barrier::abort) was called.
    BrokenBarrier,
    /// An argument is out of range: zero processes, a chunk size of zero,
    /// mismatched lengths, a function the workers cannot call, and so on.
    InvalidArgument(String),
    /// In the middle of a zero-copy [`map_inplace`](crate::Pool::map_inplace),
    /// the kernel refused a worker access to the caller's memory after the
    /// worker had written part of its chunk, so the chunk can be neither
    /// finished nor run again: the slice is partly mapped. The pool copies
    /// from then on. (Other maps redo a refused chunk by copying instead.)
    ZeroCopyRefused {
        /// The `errno` of the refused `process_vm_readv`/`writev`.
        errno: i32,
    },
    /// The shared memory describing the task held impossible values when the
    /// parent read its outcome back (the string says which): something in
    /// the worker — the task, a C library it called, an `unsafe` bug — wrote
    /// over the pool's segment. The parent never reads or writes outside the
    /// segment for it; that task's result is lost, and the pool goes on.
    SlotCorrupted(String),
    /// A fixed-size table is full: more tasks in flight than the pool has
    /// slots for, a map or argument larger than the pool's shared arena has
    /// room for, or the program's object heap is used up. Collect or drop
    /// results (or objects) and try again.
    CapacityExceeded(String),
    /// A call came at the wrong moment for the object's state: `join` before
    /// `close`, `successful` before the result is ready, a process joined
    /// before it was started or started twice, a second `set_start_method`.
    InvalidState(String),
    /// A value did not decode as the type asked for: a manager object read
    /// with another type than it was written with, or a corrupt reply.
    Decode(String),
    /// A manager and its client do not share the authkey (or the peer is
    /// not a shmpool manager); the connection was closed.
    AuthenticationFailed,
    /// A worker rank of an MPI pool ([`mpi::Pool`](crate::mpi::Pool)) could
    /// not run a task, or could not start its local pool; `why` says what it
    /// reported.
    #[cfg(feature = "mpi")]
    RankFailed {
        /// The rank, in the job's world communicator.
        rank: i32,
        /// What the rank reported.
        why: String,
    },
    /// A rank of an MPI pool sent a message that breaks the protocol: a
    /// length other than the one asked for, a result for another task. Nothing
    /// of it was used. Every rank must run the same binary.
    #[cfg(feature = "mpi")]
    BadMessage {
        /// The rank that sent it.
        rank: i32,
        /// What was wrong with it.
        why: String,
    },
    /// The operating system refused something (creating shared memory, forking).
    Io(std::io::Error),
    /// The work was stopped by [`AsyncResult::abort`](crate::AsyncResult::abort)
    /// (or by dropping a handle that aborts on drop): a task not yet started
    /// was withdrawn, a running one was stopped by killing its worker, which
    /// the pool replaced. It will not finish.
    Aborted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out waiting for the result"),
            Error::TaskTimedOut { elements } => {
                f.write_str(
                    "the task ran longer than the pool's task_timeout and was killed with its worker",
                )?;
                write_elements(f, elements)
            }
            Error::CapacityExceeded(why) => write!(f, "capacity exceeded: {why}"),
            Error::InvalidState(why) => write!(f, "invalid state: {why}"),
            Error::TaskPanicked { message } => {
                f.write_str("the task panicked in its worker")?;
                if let Some(location) = message.location() {
                    write!(f, " at {location}")?;
                }
                write!(f, ": {message}")?;
                write_elements(f, &message.0.elements)
            }
            Error::WorkerDied {
                pid,
                signal,
                elements,
                cause,
            } => {
                match cause {
                    DeathCause::OutOfMemory => f.write_str("out of memory: ")?,
                    DeathCause::MemoryLimit => {
                        f.write_str("an allocation failed past memory_limit_per_worker: ")?
                    }
                    DeathCause::Other => {}
                }
                match signal {
                    Some(sig) => write!(
                        f,
                        "worker process {pid} died from signal {sig} while running the task"
                    )?,
                    None => write!(f, "worker process {pid} exited while running the task")?,
                }
                write_elements(f, elements)
            }
            Error::Closed => f.write_str("the pool is closed and accepts no more work"),
            Error::Terminated => f.write_str("the pool was terminated before the task finished"),
            Error::InputPanicked { message } => {
                write!(f, "the imap input iterator panicked: {message}")
            }
            Error::PoolBroken(why) => write!(f, "the pool is broken: {why}"),
            Error::InitializerFailed { message } => {
                write!(f, "the pool's initializer failed in a worker: {message}")
            }
            Error::CallbackPanicked { message } => {
                write!(f, "a result callback panicked: {message}")
            }
            Error::StartFailed(why) => write!(f, "a worker process could not start: {why}"),
            Error::OwnerDied => f.write_str(
                "the process holding the lock died; the lock was released and is usable again",
            ),
            Error::PeersGone => f.write_str(
                "no other process of the program, and no other thread of this one, is alive \
                 to send what this end waits for (or the manager's server has stopped)",
            ),
            Error::BrokenBarrier => f.write_str("the barrier is broken"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::ZeroCopyRefused { errno } => write!(
                f,
                "a worker was refused the caller's memory in the middle of an in-place map ({}); \
                 the slice is partly mapped",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::SlotCorrupted(what) => write!(
                f,
                "the task's slot in shared memory was written over in its worker: {what}"
            ),
            Error::Decode(why) => write!(f, "cannot decode the value: {why}"),
            Error::AuthenticationFailed => f.write_str(
                "authentication with the manager failed: the two sides do not share the authkey",
            ),
            #[cfg(feature = "mpi")]
            Error::RankFailed { rank, why } => {
                write!(f, "MPI rank {rank} could not run the task: {why}")
            }
            #[cfg(feature = "mpi")]
            Error::BadMessage { rank, why } => write!(
                f,
                "MPI rank {rank} sent a message that breaks the protocol ({why}); \
                 do all ranks run the same binary?"
            ),
            Error::Io(e) => write!(f, "operating system error: {e}"),
            Error::Aborted => f.write_str("the task was aborted before it finished"),
        }
    }
}

/// Why a worker died, in [`Error::WorkerDied`]: whether memory was the
/// reason, as far as the pool can tell from outside the dead process.
///
/// How it tells:
/// * [`MemoryLimit`](DeathCause::MemoryLimit): under
///   [`memory_limit_per_worker`](crate::PoolBuilder::memory_limit_per_worker),
///   the worker's SIGABRT handler found `errno` set to `ENOMEM` (Rust
///   aborts the process when an allocation fails, right after the failing
///   call), and recorded it in the worker's record in the pool's segment.
/// * [`OutOfMemory`](DeathCause::OutOfMemory): the worker was killed by
///   SIGKILL that the pool did not send (no task timeout, no terminate),
///   and the kernel's count of OOM kills (`oom_kill` in `/proc/vmstat`,
///   which counts cgroup OOM kills too) went up since the pool last looked.
///   Another process killed by the OOM killer at the same moment would be
///   mistaken for it: a strong hint, not a proof.
/// * [`Other`](DeathCause::Other): anything else (a signal, `abort()`, an
///   `exit()` from the task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeathCause {
    /// Not known to be memory.
    #[default]
    Other,
    /// Killed by the kernel's OOM killer (system-wide or its cgroup's).
    OutOfMemory,
    /// An allocation failed past the pool's `memory_limit_per_worker`.
    MemoryLimit,
}

/// What [`Error::TaskPanicked`] says of a task's panic: its message, and
/// where in the source the panic was raised.
///
/// It stands for the message: it derefs to it (`str`), displays as it and
/// compares equal with it, so code written when the field was a `String`
/// (`assert_eq!(message, "boom")`, `message.contains(..)`, `{message}`)
/// reads the same. The worker's slot holds 192 bytes for the message and
/// its location together: a longer message is cut, on a char boundary.
///
/// ```
/// use shmpool::{Error, Pool};
///
/// fn check(x: u64) -> u64 {
///     assert!(x < 3, "too large: {x}");
///     x
/// }
/// let pool = Pool::new(2)?;
/// let err = pool.map_chunked(check, &[0, 1, 2, 3], 2).unwrap_err();
/// let Error::TaskPanicked { message } = &err else { panic!("{err}") };
/// assert_eq!(message, "too large: 3");
/// assert!(message.location().unwrap().starts_with("src/"));
/// assert_eq!(err.elements(), Some(2..4)); // the chunk that panicked
/// // the task panicked in its worker at src/…: too large: 3 (input elements 2..4)
/// println!("{err}");
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PanicMessage(
    // Boxed: every `Result<_, Error>` is as large as the largest variant, and
    // results travel through the hot paths of every call.
    Box<Panic>,
);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Panic {
    text: String,
    location: Option<String>,
    /// From a map: the chunk's input elements (see [`Error::elements`]).
    elements: Option<Range<usize>>,
}

impl fmt::Debug for PanicMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicMessage")
            .field("text", &self.0.text)
            .field("location", &self.0.location)
            .field("elements", &self.0.elements)
            .finish()
    }
}

impl PanicMessage {
    /// A message raised at `location` (`file:line:column`).
    pub(crate) fn new(text: String, location: Option<String>) -> PanicMessage {
        PanicMessage(Box::new(Panic {
            text,
            location,
            elements: None,
        }))
    }

    /// Reads the form a panic travels in between processes: the location's
    /// bytes (`location_len` of them, as many as there are if fewer), then
    /// the message's; either may be cut inside a character.
    pub(crate) fn from_wire(bytes: &[u8], location_len: usize) -> PanicMessage {
        let (location, text) = bytes.split_at(location_len.min(bytes.len()));
        let location =
            (!location.is_empty()).then(|| String::from_utf8_lossy(location).into_owned());
        PanicMessage::new(String::from_utf8_lossy(text).into_owned(), location)
    }

    /// The panic's message: its payload if that was a string.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Where the panic was raised, as `file:line:column` (the form Rust's
    /// own panic message gives, `src/main.rs:7:5`); `None` if the worker
    /// did not learn it (a panic resumed with
    /// [`resume_unwind`](std::panic::resume_unwind), which runs no panic
    /// hook, or one from another machine's rank).
    pub fn location(&self) -> Option<&str> {
        self.0.location.as_deref()
    }
}

impl std::ops::Deref for PanicMessage {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0.text
    }
}

impl AsRef<str> for PanicMessage {
    fn as_ref(&self) -> &str {
        &self.0.text
    }
}

impl fmt::Display for PanicMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl From<String> for PanicMessage {
    fn from(text: String) -> PanicMessage {
        PanicMessage::new(text, None)
    }
}

impl From<&str> for PanicMessage {
    fn from(text: &str) -> PanicMessage {
        PanicMessage::new(text.to_owned(), None)
    }
}

impl From<PanicMessage> for String {
    fn from(message: PanicMessage) -> String {
        message.0.text
    }
}

/// Compares the message alone, as a `String` field did.
macro_rules! eq_message {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for PanicMessage {
            fn eq(&self, other: &$t) -> bool {
                self.0.text == *other
            }
        }
        impl PartialEq<PanicMessage> for $t {
            fn eq(&self, other: &PanicMessage) -> bool {
                *self == other.0.text
            }
        }
    )*};
}
eq_message!(str, &str, String);

/// Names a map's elements in an error message.
fn write_elements(f: &mut fmt::Formatter<'_>, elements: &Option<Range<usize>>) -> fmt::Result {
    match elements {
        Some(r) if r.len() == 1 => write!(f, " (input element {})", r.start),
        Some(r) => write!(f, " (input elements {}..{})", r.start, r.end),
        None => Ok(()),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl Error {
    pub(crate) fn invalid(why: impl Into<String>) -> Error {
        Error::InvalidArgument(why.into())
    }

    pub(crate) fn full(why: impl Into<String>) -> Error {
        Error::CapacityExceeded(why.into())
    }

    pub(crate) fn state(why: impl Into<String>) -> Error {
        Error::InvalidState(why.into())
    }

    /// Which input elements of a map the failed chunk covered: for
    /// [`Error::WorkerDied`], [`Error::TaskTimedOut`] and
    /// [`Error::TaskPanicked`] from a `map`,
    /// `starmap`, `map_into`, their `_chunked` and `_async` forms, or an
    /// `imap`, and from the same calls of [`Pool::serde`](crate::Pool::serde);
    /// `None` otherwise.
    ///
    /// To find the one input that kills a worker, run just those elements
    /// again with a chunk size of 1: each then fails on its own. With
    /// [`retries`](crate::PoolBuilder::retries), `map`, `starmap` and
    /// `map_into` (and `pool.serde()`'s `map` and `starmap`) do this
    /// themselves: a chunk whose worker dies is split in halves on each
    /// retry. A worker that died by chance then costs only a rerun of its
    /// chunk, and an input that kills every worker it meets fails the map
    /// with an error that, given enough retries (about log2 of the chunk
    /// size), names that single element.
    ///
    /// ```
    /// fn fragile(x: u64) -> u64 {
    ///     if x == 13 { std::process::abort() }
    ///     x
    /// }
    /// let pool = shmpool::Pool::new(2)?;
    /// let items: Vec<u64> = (0..40).collect();
    /// let err = pool.map_chunked(fragile, &items, 10).unwrap_err();
    /// let suspects = err.elements().expect("a worker died in a map");
    /// assert_eq!(suspects, 10..20);
    /// // Re-run just those, one element per task, to find the culprit.
    /// let culprit = suspects
    ///     .clone()
    ///     .find(|&i| pool.map_chunked(fragile, &items[i..i + 1], 1).is_err());
    /// assert_eq!(culprit, Some(13));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn elements(&self) -> Option<Range<usize>> {
        match self {
            Error::WorkerDied { elements, .. } | Error::TaskTimedOut { elements } => {
                elements.clone()
            }
            Error::TaskPanicked { message } => message.0.elements.clone(),
            _ => None,
        }
    }

    /// Names the elements a failed map chunk covered, if this error is one
    /// that can say so.
    pub(crate) fn covering(mut self, range: Range<usize>) -> Error {
        match &mut self {
            Error::WorkerDied { elements, .. } | Error::TaskTimedOut { elements } => {
                *elements = Some(range)
            }
            Error::TaskPanicked { message } => message.0.elements = Some(range),
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_five_words_at_most() {
        // Every call's `Result<_, Error>` is as large as the largest variant:
        // a larger one made each tiny `apply_async` 5 % slower.
        assert!(size_of::<Error>() <= 40, "{}", size_of::<Error>());
    }

    #[test]
    fn is_send_sync_and_displays_what_to_know() {
        fn assert_send_sync<T: Send + Sync + std::error::Error + 'static>() {}
        assert_send_sync::<Error>();
        let died = Error::WorkerDied {
            pid: 12,
            signal: Some(9),
            elements: None,
            cause: DeathCause::Other,
        }
        .to_string();
        assert!(died.contains("12") && died.contains("signal 9"), "{died}");
        let in_map = Error::WorkerDied {
            pid: 12,
            signal: None,
            elements: Some(40..48),
            cause: DeathCause::OutOfMemory,
        };
        assert!(in_map.to_string().contains("out of memory"), "{in_map}");
        assert!(in_map.to_string().contains("elements 40..48"), "{in_map}");
        assert_eq!(in_map.elements(), Some(40..48));
        let one = Error::TaskTimedOut { elements: None }.covering(7..8);
        assert!(one.to_string().contains("element 7"), "{one}");
        let panicked = Error::TaskPanicked {
            message: "boom".into(),
        }
        .to_string();
        assert_eq!(panicked, "the task panicked in its worker: boom");
    }

    #[test]
    fn a_panic_displays_its_location_and_its_chunk() {
        let message = PanicMessage::new("boom".into(), Some("src/main.rs:7:5".into()));
        let err = Error::TaskPanicked { message }.covering(8..16);
        assert_eq!(
            err.to_string(),
            "the task panicked in its worker at src/main.rs:7:5: boom (input elements 8..16)"
        );
        assert_eq!(err.elements(), Some(8..16));
        // Code written for a `String` field still compiles and holds.
        let Error::TaskPanicked { message } = err else {
            unreachable!()
        };
        assert_eq!(message, "boom");
        assert_eq!("boom", message);
        assert_eq!(message, *"boom");
        assert_eq!(message, String::from("boom"));
        assert_eq!(String::from("boom"), message);
        assert!(message.starts_with("bo") && message.len() == 4);
        assert_eq!(format!("{message}"), "boom");
        assert_eq!(String::from(message), "boom");
    }
}
