//! The messages between rank 0 and the worker ranks: tags, the two headers,
//! and the checks a receiver makes before it trusts a length that came from
//! another process.
//!
//! ```text
//! rank 0                                   worker rank r
//!   TASK        TaskHeader (40 bytes)  ->
//!   TASK_DATA   len * in_size bytes    ->   (only if non-empty)
//!                                            runs the chunk in its local Pool
//!            <- RESULT      ResultHeader (32 bytes)
//!            <- RESULT_DATA len * out_size bytes (Ok), or the error message
//!   STOP        empty                  ->   the rank drops its pool, returns None
//! ```
//!
//! Rank 0 keeps up to [`IN_FLIGHT`] tasks on each worker rank: it sends a
//! rank another task only while the rank has fewer, so the rank always has a
//! stage to receive it into. A rank answers its tasks in the order they came.
//! Neither side waits on the other with a send outstanding: a worker rank
//! sends only with `MPI_Isend` and goes on receiving; rank 0 sends task data
//! with `MPI_Isend` and goes on receiving results, and its only blocking sends
//! are headers, which a rank that never blocks always comes to receive.

use crate::error::{Error, PanicMessage};
use crate::pool::schedule::Elem;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Rank 0 to a worker: a [`TaskHeader`].
pub(crate) const TASK: i32 = 1;
/// Rank 0 to a worker: the input bytes of the task just announced.
pub(crate) const TASK_DATA: i32 = 2;
/// A worker to rank 0: a [`ResultHeader`].
pub(crate) const RESULT: i32 = 3;
/// A worker to rank 0: the output bytes, or the error message, of that result.
pub(crate) const RESULT_DATA: i32 = 4;
/// Rank 0 to a worker: no more tasks; an empty message.
pub(crate) const STOP: i32 = 5;

/// The tasks rank 0 keeps on each rank (its own local pool included): one
/// computes while the next is received and the last one's result sent.
pub(crate) const IN_FLIGHT: usize = 2;

/// The most bytes one message carries: MPI counts are `int`s. Maps cut their
/// chunks below it.
pub(crate) const MAX_MESSAGE: usize = i32::MAX as usize;

/// The longest error message a result carries (longer ones are cut).
pub(crate) const MAX_ERROR_MESSAGE: usize = 1024;

/// One task: run the entry point at `entry` over `len` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct TaskHeader {
    /// Rank 0's name for the task; the result carries it back.
    pub(crate) id: u64,
    /// The chunk entry point, as a code offset (`task::EntryPoint`).
    pub(crate) entry: u64,
    /// Elements of input (and of output).
    pub(crate) len: u64,
    pub(crate) in_size: u32,
    pub(crate) in_align: u32,
    pub(crate) out_size: u32,
    pub(crate) out_align: u32,
}

/// What a worker checked in a [`TaskHeader`] before it allocates or receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckedTask {
    pub(crate) input: Elem,
    pub(crate) output: Elem,
    pub(crate) len: usize,
    pub(crate) in_bytes: usize,
    pub(crate) out_bytes: usize,
}

impl TaskHeader {
    pub(crate) fn new(id: u64, entry: u64, len: usize, input: Elem, output: Elem) -> TaskHeader {
        TaskHeader {
            id,
            entry,
            len: len as u64,
            in_size: input.size as u32,
            in_align: input.align as u32,
            out_size: output.size as u32,
            out_align: output.align as u32,
        }
    }

    /// The sizes this header asks for, if they are possible: alignments are
    /// powers of two up to 64 that divide their sizes, and neither side
    /// exceeds one message.
    pub(crate) fn check(&self) -> Result<CheckedTask, String> {
        let elem = |size: u32, align: u32| -> Result<Elem, String> {
            let (size, align) = (size as usize, align as usize);
            if !align.is_power_of_two() || align > 64 || size % align != 0 {
                return Err(format!("element of {size} bytes aligned to {align}"));
            }
            Ok(Elem { size, align })
        };
        let input = elem(self.in_size, self.in_align)?;
        let output = elem(self.out_size, self.out_align)?;
        let len = usize::try_from(self.len).map_err(|_| "length overflows".to_owned())?;
        let bytes = |e: Elem| {
            len.checked_mul(e.size)
                .filter(|&b| b <= MAX_MESSAGE)
                .ok_or_else(|| format!("{len} elements of {} bytes exceed a message", e.size))
        };
        Ok(CheckedTask {
            input,
            output,
            len,
            in_bytes: bytes(input)?,
            out_bytes: bytes(output)?,
        })
    }
}

/// [`ResultHeader::status`]: the outputs follow.
pub(crate) const OK: u32 = 0;
/// The task panicked; its message follows.
pub(crate) const PANICKED: u32 = 1;
/// The local worker running the task died (`pid`, `signal`).
pub(crate) const WORKER_DIED: u32 = 2;
/// The task ran past the rank's task timeout.
pub(crate) const TIMEOUT: u32 = 3;
/// The rank could not run the task (a refused header, no memory…); the
/// reason follows.
pub(crate) const FAILED: u32 = 4;

/// How one task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct ResultHeader {
    pub(crate) id: u64,
    /// [`OK`], [`PANICKED`], [`WORKER_DIED`], [`TIMEOUT`] or [`FAILED`].
    pub(crate) status: u32,
    /// With [`WORKER_DIED`]: the signal, or -1 if the worker exited.
    pub(crate) signal: i32,
    /// With [`WORKER_DIED`]: the worker's pid (on that rank's node).
    pub(crate) pid: u32,
    pub(crate) _pad: u32,
    /// The bytes of the RESULT_DATA message that follows (none if 0).
    pub(crate) bytes: u64,
}

/// A task's failure as it travels back: everything [`Error`] needs, `Clone`
/// so that a result handle can return it more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteError {
    Panicked(PanicMessage),
    WorkerDied {
        pid: u32,
        signal: Option<i32>,
    },
    Timeout,
    /// The rank refused or could not run the task.
    Failed {
        rank: i32,
        why: String,
    },
    /// The rank's answer broke the protocol.
    BadMessage {
        rank: i32,
        why: String,
    },
    Terminated,
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Error {
        match e {
            RemoteError::Panicked(message) => Error::TaskPanicked { message },
            RemoteError::WorkerDied { pid, signal } => Error::WorkerDied {
                pid,
                signal,
                elements: None,
                cause: crate::error::DeathCause::Other,
            },
            RemoteError::Timeout => Error::Timeout,
            RemoteError::Failed { rank, why } => Error::RankFailed { rank, why },
            RemoteError::BadMessage { rank, why } => Error::BadMessage { rank, why },
            RemoteError::Terminated => Error::Terminated,
        }
    }
}

impl ResultHeader {
    /// The header for `id` ending as `outcome` (`Ok(bytes of output)`), and
    /// the message to send after it if it failed.
    pub(crate) fn new(id: u64, outcome: Result<usize, &Error>) -> (ResultHeader, Vec<u8>) {
        let mut header = ResultHeader {
            id,
            status: OK,
            signal: -1,
            pid: 0,
            _pad: 0,
            bytes: 0,
        };
        let message = match outcome {
            Ok(bytes) => {
                header.bytes = bytes as u64;
                return (header, Vec::new());
            }
            Err(Error::TaskPanicked { message }) => {
                // The location first, its length in `signal`, then the text.
                header.status = PANICKED;
                let location = message.location().unwrap_or("");
                header.signal = location.len() as i32;
                format!("{location}{message}")
            }
            Err(Error::WorkerDied { pid, signal, .. }) => {
                header.status = WORKER_DIED;
                header.pid = *pid;
                header.signal = signal.unwrap_or(-1);
                String::new()
            }
            Err(Error::Timeout) => {
                header.status = TIMEOUT;
                String::new()
            }
            Err(other) => {
                header.status = FAILED;
                other.to_string()
            }
        };
        let mut message = message.into_bytes();
        message.truncate(MAX_ERROR_MESSAGE);
        header.bytes = message.len() as u64;
        (header, message)
    }

    /// How many RESULT_DATA bytes rank 0 accepts after this header, for a
    /// task that asked for `out_bytes` bytes of output: exactly those for
    /// [`OK`], a bounded message otherwise.
    pub(crate) fn expected_bytes(&self, rank: i32, out_bytes: usize) -> Result<usize, RemoteError> {
        let bad = |why: String| RemoteError::BadMessage { rank, why };
        let bytes = usize::try_from(self.bytes).map_err(|_| bad("length overflows".into()))?;
        let fits = match self.status {
            OK => bytes == out_bytes,
            PANICKED | FAILED => bytes <= MAX_ERROR_MESSAGE,
            WORKER_DIED | TIMEOUT => bytes == 0,
            other => return Err(bad(format!("unknown result status {other}"))),
        };
        if !fits {
            return Err(bad(format!(
                "a result of status {} announced {bytes} bytes (asked for {out_bytes})",
                self.status
            )));
        }
        Ok(bytes)
    }

    /// The failure this header and its message describe (`None` for [`OK`]).
    pub(crate) fn failure(&self, rank: i32, message: &[u8]) -> Option<RemoteError> {
        let text = || String::from_utf8_lossy(message).into_owned();
        Some(match self.status {
            OK => return None,
            PANICKED => RemoteError::Panicked(PanicMessage::from_wire(
                message,
                usize::try_from(self.signal).unwrap_or(0),
            )),
            WORKER_DIED => RemoteError::WorkerDied {
                pid: self.pid,
                signal: (self.signal >= 0).then_some(self.signal),
            },
            TIMEOUT => RemoteError::Timeout,
            _ => RemoteError::Failed { rank, why: text() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_header_with_impossible_sizes_is_refused() {
        let f64s = Elem::of::<f64>();
        let ok = TaskHeader::new(1, 0, 10, f64s, Elem::of::<u8>())
            .check()
            .unwrap();
        assert_eq!((ok.in_bytes, ok.out_bytes), (80, 10));
        let mut h = TaskHeader::new(1, 0, 10, f64s, f64s);
        h.in_align = 3;
        assert!(h.check().is_err());
        let mut h = TaskHeader::new(1, 0, 10, f64s, f64s);
        h.out_size = 12; // not a multiple of its alignment 8
        assert!(h.check().is_err());
        let h = TaskHeader::new(1, 0, usize::MAX / 2, f64s, f64s);
        assert!(h.check().is_err());
        let h = TaskHeader::new(1, 0, MAX_MESSAGE / 8 + 1, f64s, f64s);
        assert!(h.check().is_err());
    }

    #[test]
    fn a_result_must_announce_what_was_asked() {
        let (ok, msg) = ResultHeader::new(7, Ok(80));
        assert!(msg.is_empty());
        assert_eq!(ok.expected_bytes(1, 80), Ok(80));
        assert!(ok.expected_bytes(1, 8).is_err());
        let (died, _) = ResultHeader::new(
            7,
            Err(&Error::WorkerDied {
                pid: 42,
                signal: Some(6),
                elements: None,
                cause: crate::error::DeathCause::Other,
            }),
        );
        assert_eq!(died.expected_bytes(1, 80), Ok(0));
        assert_eq!(
            died.failure(1, &[]),
            Some(RemoteError::WorkerDied {
                pid: 42,
                signal: Some(6)
            })
        );
        let mut huge = died;
        huge.status = PANICKED;
        huge.bytes = 1 << 40;
        assert!(huge.expected_bytes(1, 80).is_err());
        huge.status = 99;
        huge.bytes = 0;
        assert!(huge.expected_bytes(1, 80).is_err());
    }

    #[test]
    fn a_panic_message_travels_whole_and_a_long_one_is_cut() {
        let (h, msg) = ResultHeader::new(
            3,
            Err(&Error::TaskPanicked {
                message: "boom".into(),
            }),
        );
        assert_eq!(
            h.failure(2, &msg),
            Some(RemoteError::Panicked("boom".into()))
        );
        let located = PanicMessage::new("boom".into(), Some("src/main.rs:7:5".into()));
        let (h, msg) = ResultHeader::new(
            3,
            Err(&Error::TaskPanicked {
                message: located.clone(),
            }),
        );
        assert_eq!(h.failure(2, &msg), Some(RemoteError::Panicked(located)));
        let long = Error::TaskPanicked {
            message: "x".repeat(5000).into(),
        };
        let (h, msg) = ResultHeader::new(3, Err(&long));
        assert_eq!(msg.len(), MAX_ERROR_MESSAGE);
        assert_eq!(h.expected_bytes(2, 0), Ok(MAX_ERROR_MESSAGE));
    }
}
