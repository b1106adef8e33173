//! Rank 0's side: which rank runs which task, the tasks waiting for a rank,
//! and the results not yet collected.
//!
//! Scheduling is dynamic: a rank gets its next task when its last result has
//! arrived, so a fast rank takes more. Each rank has at most one task, which
//! keeps the protocol free of deadlock with plain blocking sends: rank 0 sends
//! only to a rank that waits for a task, and a rank sends only the result of
//! the task it was given, which rank 0 always comes to receive.

use super::comm::{self, bytes_of, Comm};
use super::protocol::{
    RemoteError, ResultHeader, TaskHeader, RESULT, RESULT_DATA, STOP, TASK, TASK_DATA,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::mem::MaybeUninit;

/// Where a task's input comes from.
pub(crate) enum Input {
    /// Bytes owned by the task (`apply_async`, `imap`).
    Owned(Vec<MaybeUninit<u8>>),
    /// A range of a synchronous map's input slice.
    Borrowed(*const u8),
}

/// Where a task's output goes.
#[derive(Clone, Copy)]
pub(crate) enum Output {
    /// Into a fresh vector, kept in [`Dispatcher::done`] until collected.
    Owned,
    /// Straight into a synchronous map's output.
    Borrowed(*mut u8),
}

/// A task not yet sent.
pub(crate) struct Pending {
    pub(crate) header: TaskHeader,
    pub(crate) in_bytes: usize,
    pub(crate) out_bytes: usize,
    pub(crate) input: Input,
    pub(crate) output: Output,
}

/// The task a rank is running.
struct Running {
    id: u64,
    out_bytes: usize,
    output: Output,
}

/// A finished task: its output bytes (empty for a borrowed output, which
/// already holds them), or its failure.
pub(crate) type Done = Result<Vec<u8>, RemoteError>;

/// Rank 0's state; kept behind the pool's mutex.
pub(crate) struct Dispatcher {
    /// The pool's communicator; dropped (freed) by [`stop`](Self::stop),
    /// before MPI is finalized.
    comm: Option<Comm>,
    next_id: u64,
    /// Index `r - 1`: what worker rank `r` runs.
    running: Vec<Option<Running>>,
    /// Owned tasks waiting for a free rank, in submission order.
    queue: VecDeque<Pending>,
    /// Finished tasks, by id, until collected.
    done: HashMap<u64, Done>,
    /// Tasks whose handle was dropped: their results are thrown away.
    abandoned: HashSet<u64>,
    stopped: bool,
}

// SAFETY: `Comm` is Send (see there). A `Borrowed` pointer exists only while
// the synchronous map that owns the buffer holds the pool's mutex: it sends
// or receives every such task before it returns or lets the mutex go.
unsafe impl Send for Dispatcher {}

impl Dispatcher {
    pub(crate) fn new(comm: Comm) -> Dispatcher {
        let workers = comm.size() as usize - 1;
        Dispatcher {
            comm: Some(comm),
            next_id: 1,
            running: (0..workers).map(|_| None).collect(),
            queue: VecDeque::new(),
            done: HashMap::new(),
            abandoned: HashSet::new(),
            stopped: false,
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The communicator; only used before [`stop`](Self::stop), which every
    /// caller checks first.
    fn comm(&self) -> &Comm {
        self.comm
            .as_ref()
            .expect("the pool's communicator is used after stop")
    }

    /// A fresh task id.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues an owned task; a rank takes it at the next [`assign`](Self::assign).
    /// After [`stop`](Self::stop), the task fails with `Terminated` at once.
    pub(crate) fn enqueue(&mut self, task: Pending) {
        if self.stopped {
            self.done
                .insert(task.header.id, Err(RemoteError::Terminated));
            return;
        }
        self.queue.push_back(task);
    }

    /// The worker rank that is idle, if any.
    pub(crate) fn idle_rank(&self) -> Option<i32> {
        self.running
            .iter()
            .position(Option::is_none)
            .map(|i| i as i32 + 1)
    }

    /// Whether any rank runs a task.
    pub(crate) fn busy(&self) -> bool {
        self.running.iter().any(Option::is_some)
    }

    /// Sends queued tasks to idle ranks.
    pub(crate) fn assign(&mut self) {
        if self.stopped {
            return;
        }
        while !self.queue.is_empty() {
            let Some(rank) = self.idle_rank() else { return };
            let task = self.queue.pop_front().expect("not empty");
            // SAFETY: an owned input lives in `task` until `send` returns.
            unsafe { self.send(rank, task) };
        }
    }

    /// Sends `task` to the idle `rank`.
    ///
    /// # Safety
    /// A `Borrowed` input points at `task.in_bytes` readable bytes, valid
    /// until this returns; a `Borrowed` output at `task.out_bytes` writable
    /// bytes that nothing else accesses until the task is done (received by
    /// [`receive`](Self::receive)).
    pub(crate) unsafe fn send(&mut self, rank: i32, task: Pending) {
        debug_assert!(self.running[rank as usize - 1].is_none());
        self.comm()
            .send(rank, TASK, zerocopy::IntoBytes::as_bytes(&task.header));
        if task.in_bytes > 0 {
            let ptr = match &task.input {
                Input::Owned(bytes) => bytes.as_ptr().cast::<u8>(),
                Input::Borrowed(ptr) => *ptr,
            };
            // SAFETY: `in_bytes` bytes at `ptr` (an owned vector of that
            // length, or the contract), below MAX_MESSAGE (the map cut it so).
            unsafe { self.comm().send_raw(rank, TASK_DATA, ptr, task.in_bytes) };
        }
        self.running[rank as usize - 1] = Some(Running {
            id: task.header.id,
            out_bytes: task.out_bytes,
            output: task.output,
        });
    }

    /// Receives one result if one has arrived: records it in
    /// [`done`](Self::done) (or drops it if abandoned) and frees its rank.
    /// Returns the finished task's id.
    pub(crate) fn receive(&mut self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        let (msg, status) = self.comm().try_probe(None, Some(RESULT))?;
        let rank = status.source_rank();
        let Some(running) = rank
            .checked_sub(1)
            .and_then(|i| self.running.get_mut(i as usize))
            .and_then(Option::take)
        else {
            // A result from a rank that runs nothing: drained, not trusted.
            comm::discard(msg, &status);
            return None;
        };
        let outcome = self.collect(rank, &running, msg, &status);
        if self.abandoned.remove(&running.id) {
            return Some(running.id);
        }
        self.done.insert(running.id, outcome);
        Some(running.id)
    }

    /// Reads the result header in `msg` and what follows it, checking every
    /// length against what `running` asked for.
    fn collect(
        &mut self,
        rank: i32,
        running: &Running,
        msg: mpi::point_to_point::Message,
        status: &mpi::point_to_point::Status,
    ) -> Done {
        let bad = |why: String| RemoteError::BadMessage { rank, why };
        let header = comm::receive_header::<ResultHeader>(msg, status)
            .map_err(|bytes| bad(format!("a result header of {bytes} bytes")))?;
        let expected = header.expected_bytes(rank, running.out_bytes);
        let data = match expected {
            Ok(0) => None,
            // The rank sends the data it announced: receive it, even if the
            // announcement was refused, so that nothing stays behind.
            _ if header.bytes > 0 => Some(self.comm().probe(Some(rank), Some(RESULT_DATA))),
            _ => None,
        };
        if header.id != running.id {
            if let Some((msg, status)) = data {
                comm::discard(msg, &status);
            }
            return Err(bad(format!(
                "the result of task {} came for task {}",
                header.id, running.id
            )));
        }
        let expected = match expected {
            Ok(n) => n,
            Err(e) => {
                if let Some((msg, status)) = data {
                    comm::discard(msg, &status);
                }
                return Err(e);
            }
        };
        let message = match data {
            None => Vec::new(),
            Some((msg, status)) => {
                let got = bytes_of(&status);
                if got != expected {
                    comm::discard(msg, &status);
                    return Err(bad(format!("{expected} bytes announced, {got} came")));
                }
                match (header.failure(rank, &[]), running.output) {
                    (None, Output::Borrowed(ptr)) => {
                        // SAFETY: `ptr` has room for `out_bytes` == `got`
                        // bytes, reserved for this task (`send`'s contract).
                        unsafe { comm::receive_raw(msg, ptr, got) };
                        Vec::new()
                    }
                    _ => comm::receive_vec(msg, &status),
                }
            }
        };
        match header.failure(rank, &message) {
            Some(failure) => Err(failure),
            None => Ok(message),
        }
    }

    /// Takes the result of `id` if it has finished.
    pub(crate) fn take(&mut self, id: u64) -> Option<Done> {
        self.done.remove(&id)
    }

    /// Whether `id` has finished and is not yet taken.
    pub(crate) fn is_done(&self, id: u64) -> bool {
        self.done.contains_key(&id)
    }

    /// Forgets `id`: its result, now or when it comes, is dropped; if it was
    /// still queued, it is not sent at all.
    pub(crate) fn abandon(&mut self, id: u64) {
        if self.done.remove(&id).is_some() {
            return;
        }
        let queued = self.queue.len();
        self.queue.retain(|t| t.header.id != id);
        if self.queue.len() == queued && !self.stopped {
            self.abandoned.insert(id);
        }
    }

    /// Waits for the tasks the ranks run, drops the queued ones (their
    /// handles get `Terminated`), and tells every rank to stop.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        while let Some(task) = self.queue.pop_front() {
            self.done
                .insert(task.header.id, Err(RemoteError::Terminated));
        }
        let mut backoff = comm::Backoff::new();
        while self.busy() {
            if self.receive().is_some() {
                backoff = comm::Backoff::new();
            } else {
                backoff.snooze();
            }
        }
        for rank in 1..self.comm().size() {
            self.comm().send(rank, STOP, &[]);
        }
        self.abandoned.clear();
        self.stopped = true;
        self.comm = None;
    }
}
