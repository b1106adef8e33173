//! Rank 0's side: which rank runs which task, the tasks waiting for a rank,
//! and the results not yet collected.
//!
//! Scheduling is dynamic: a task goes to the rank with the fewest tasks, as
//! long as it has fewer than [`IN_FLIGHT`], so a fast rank takes more. Rank 0
//! is one of the ranks: its own local pool runs tasks too, polled like the
//! others ([`LocalTask`]). The protocol stays free of deadlock as
//! `protocol` describes: rank 0 sends task data without waiting
//! (`MPI_Isend`) and keeps receiving results while the sends complete.

// Unsafe code: tasks over a map's raw buffers (`Pending::borrowed`).
#![allow(unsafe_code)]

use super::comm::{self, bytes_of, Comm, Sending};
use super::local::{Finished, LocalTask, Stage};
use super::protocol::{
    RemoteError, ResultHeader, TaskHeader, IN_FLIGHT, RESULT, RESULT_DATA, STOP, TASK, TASK_DATA,
};
use crate::error::Error;
use crate::pool::schedule::{Place, SMALL_MAP_BYTES};
use crate::remote::STAGE_ALIGN;
use crate::task::EntryPoint;
use std::collections::{HashMap, HashSet, VecDeque};
use std::mem::MaybeUninit;

/// Where a task's input comes from.
enum Input {
    /// Bytes owned by the task (`apply_async`, `imap`).
    Owned(Vec<MaybeUninit<u8>>),
    /// A range of a synchronous map's input slice.
    Borrowed(*const u8),
}

/// Where a task's output goes.
#[derive(Clone, Copy)]
enum Output {
    /// Into a fresh vector, kept in [`Dispatcher::done`] until collected.
    Owned,
    /// Straight into a synchronous map's output.
    Borrowed(*mut u8),
}

/// A task not yet sent. Made by [`Pending::owned`], or by
/// [`Pending::borrowed`], whose contract keeps a borrowed task's buffers
/// valid for as long as the task exists: so the dispatcher's handling of it
/// is safe code.
pub(crate) struct Pending {
    header: TaskHeader,
    in_bytes: usize,
    out_bytes: usize,
    input: Input,
    output: Output,
}

impl Pending {
    /// A task that owns its input bytes; its output goes to a fresh vector.
    pub(crate) fn owned(
        header: TaskHeader,
        in_bytes: usize,
        out_bytes: usize,
        input: Vec<MaybeUninit<u8>>,
    ) -> Pending {
        Pending {
            header,
            in_bytes,
            out_bytes,
            input: Input::Owned(input),
            output: Output::Owned,
        }
    }

    /// A task over a range of a synchronous map's buffers.
    ///
    /// # Safety
    /// `src` points at `in_bytes` readable bytes and `dst` at `out_bytes`
    /// writable bytes, which nothing else writes (input) or accesses
    /// (output) until the task is done (received by
    /// [`Dispatcher::receive`]) and [`Dispatcher::busy`] is false.
    pub(crate) unsafe fn borrowed(
        header: TaskHeader,
        in_bytes: usize,
        out_bytes: usize,
        src: *const u8,
        dst: *mut u8,
    ) -> Pending {
        Pending {
            header,
            in_bytes,
            out_bytes,
            input: Input::Borrowed(src),
            output: Output::Borrowed(dst),
        }
    }
}

/// A task on a worker rank.
struct Remote {
    id: u64,
    out_bytes: usize,
    output: Output,
    /// The send of its input, if not yet complete; declared before the input
    /// it reads, so that dropping waits for it first.
    sending: Option<Sending>,
    input: Input,
}

/// A task in rank 0's own local pool.
struct LocalRun {
    header: TaskHeader,
    input: Input,
    output: Output,
    /// The stage it runs in, unless it runs on the caller's memory.
    stage: Option<Stage>,
    task: LocalTask,
}

/// Rank 0's own local pool and the tasks it runs there.
struct Local {
    running: Vec<LocalRun>,
    /// Stages no task uses, kept warm for the next.
    stages: Vec<Stage>,
    /// Declared last: dropped after the stages in its segment.
    pool: crate::Pool,
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
    /// Index `r - 1`: what worker rank `r` runs, oldest first (the order it
    /// answers in).
    remote: Vec<VecDeque<Remote>>,
    /// Rank 0's own local pool, if it has one; dropped by `stop`.
    local: Option<Local>,
    /// Sends of task data not yet complete whose task has ended (a rank
    /// that refused a header drains the data later).
    draining: Vec<(Sending, Input)>,
    /// Owned tasks waiting for a free rank, in submission order.
    queue: VecDeque<Pending>,
    /// Finished tasks, by id, until collected.
    done: HashMap<u64, Done>,
    /// Tasks whose handle was dropped: their results are thrown away.
    abandoned: HashSet<u64>,
    stopped: bool,
}

// SAFETY: `Comm` and `Sending` are Send (see there). A `Borrowed` pointer
// exists only while the synchronous map that owns the buffer holds the
// pool's mutex: it sends or receives every such task, and waits for every
// send of its data, before it returns or lets the mutex go.
unsafe impl Send for Dispatcher {}

impl Dispatcher {
    /// The dispatcher over `comm`'s worker ranks and, if given, rank 0's own
    /// local pool.
    pub(crate) fn new(comm: Comm, local: Option<crate::Pool>) -> Dispatcher {
        let workers = comm.size() as usize - 1;
        Dispatcher {
            comm: Some(comm),
            next_id: 1,
            remote: (0..workers).map(|_| VecDeque::new()).collect(),
            local: local.map(|pool| Local {
                running: Vec::new(),
                stages: Vec::new(),
                pool,
            }),
            draining: Vec::new(),
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

    /// The rank with the fewest tasks, if it has fewer than [`IN_FLIGHT`]: a
    /// worker rank, or 0 for rank 0's own local pool. On a tie a worker rank
    /// goes first: a lone `apply` then takes the same path as without a
    /// local pool.
    pub(crate) fn free_rank(&self) -> Option<i32> {
        let remote = self
            .remote
            .iter()
            .enumerate()
            .map(|(i, r)| (r.len(), i as i32 + 1));
        let local = self.local.iter().map(|l| (l.running.len(), 0));
        remote
            .chain(local)
            .filter(|&(n, _)| n < IN_FLIGHT)
            .min_by_key(|&(n, _)| n)
            .map(|(_, rank)| rank)
    }

    /// Whether any rank runs a task, or a send of task data is outstanding.
    pub(crate) fn busy(&self) -> bool {
        self.remote.iter().any(|r| !r.is_empty())
            || self.local.as_ref().is_some_and(|l| !l.running.is_empty())
            || !self.draining.is_empty()
    }

    /// Whether a send of task data is still outstanding.
    pub(crate) fn sending(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Sends queued tasks to ranks with room.
    pub(crate) fn assign(&mut self) {
        if self.stopped {
            return;
        }
        while !self.queue.is_empty() {
            let Some(rank) = self.free_rank() else { return };
            let task = self.queue.pop_front().expect("not empty");
            self.send(rank, task);
        }
    }

    /// Gives `task` to `rank` ([`free_rank`](Self::free_rank)): sends it to a
    /// worker rank, or starts it in rank 0's local pool (rank 0).
    pub(crate) fn send(&mut self, rank: i32, task: Pending) {
        if rank == 0 {
            return self.start_local(task);
        }
        debug_assert!(self.remote[rank as usize - 1].len() < IN_FLIGHT);
        self.comm()
            .send(rank, TASK, zerocopy::IntoBytes::as_bytes(&task.header));
        let sending = (task.in_bytes > 0).then(|| {
            let ptr = match &task.input {
                Input::Owned(bytes) => bytes.as_ptr().cast::<u8>(),
                Input::Borrowed(ptr) => *ptr,
            };
            // An owned vector is kept in `Remote` with the send.
            // SAFETY: `in_bytes` bytes at `ptr` (an owned vector, or the range
            // `Pending::borrowed` vouched for until the task is done), below
            // MAX_MESSAGE (the map cut it so).
            unsafe { self.comm().isend_raw(rank, TASK_DATA, ptr, task.in_bytes) }
        });
        self.remote[rank as usize - 1].push_back(Remote {
            id: task.header.id,
            out_bytes: task.out_bytes,
            output: task.output,
            sending,
            input: task.input,
        });
    }

    /// Starts `task` in rank 0's local pool: on the caller's memory if the
    /// local workers can reach it, else in a stage. A task that cannot start
    /// fails at once.
    fn start_local(&mut self, task: Pending) {
        let id = task.header.id;
        let local = self.local.as_mut().expect("rank 0 computes");
        match local.start(task, true) {
            Ok(run) => local.running.push(run),
            Err(e) => {
                self.done.insert(id, Err(remote_error(&e)));
            }
        }
    }

    /// Collects one finished task if there is one: a task of rank 0's local
    /// pool, or a result that has arrived from a worker rank. Records it in
    /// [`done`](Self::done) (or drops it if abandoned) and frees its place.
    /// Returns the finished task's id.
    pub(crate) fn receive(&mut self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        self.draining.retain_mut(|(sending, _)| !sending.test());
        let (id, outcome) = match self.receive_local() {
            Some(found) => found,
            None => self.receive_remote()?,
        };
        if !self.abandoned.remove(&id) {
            self.done.insert(id, outcome);
        }
        Some(id)
    }

    /// A task of rank 0's local pool that has finished, if any.
    fn receive_local(&mut self) -> Option<(u64, Done)> {
        let local = self.local.as_mut()?;
        let core = local.pool.core();
        let at = local.running.iter_mut().position(|r| r.task.poll(core))?;
        let run = local.running.swap_remove(at);
        let id = run.header.id;
        match local.finish(run) {
            Ok(done) => Some((id, done)),
            Err(redo) => {
                // The local workers were refused the caller's memory: the
                // task runs again, through a stage.
                match local.start(redo, false) {
                    Ok(run) => {
                        local.running.push(run);
                        None
                    }
                    Err(e) => Some((id, Err(remote_error(&e)))),
                }
            }
        }
    }

    /// A result that has arrived from a worker rank, if any.
    fn receive_remote(&mut self) -> Option<(u64, Done)> {
        let (msg, status) = self.comm().try_probe(None, Some(RESULT))?;
        let rank = status.source_rank();
        let Some(mut running) = rank
            .checked_sub(1)
            .and_then(|i| self.remote.get_mut(i as usize))
            .and_then(VecDeque::pop_front)
        else {
            // A result from a rank that runs nothing: drained, not trusted.
            comm::discard(msg, &status);
            return None;
        };
        let outcome = self.collect(rank, &running, msg, &status);
        // The rank has received the input (or refused the task, and drains
        // the input later): the send completes now or soon.
        if let Some(mut sending) = running.sending.take() {
            if !sending.test() {
                self.draining.push((sending, running.input));
            }
        }
        Some((running.id, outcome))
    }

    /// Reads the result header in `msg` and what follows it, checking every
    /// length against what `running` asked for.
    fn collect(
        &mut self,
        rank: i32,
        running: &Remote,
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
                        // bytes, reserved for this task (`Pending::borrowed`'s contract).
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
    /// handles get `Terminated`), tells every worker rank to stop, and stops
    /// rank 0's local pool.
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
        self.local = None;
        self.comm = None;
    }
}

impl Local {
    /// Starts `task` on the caller's memory if `direct` allows and the local
    /// workers can reach it (a large enough borrowed input and output), else
    /// in a stage. `Err`: it could not start (no room for a stage).
    fn start(&mut self, task: Pending, direct: bool) -> Result<LocalRun, Error> {
        let Pending {
            header,
            in_bytes,
            out_bytes,
            input,
            output,
        } = task;
        let checked = header.check().map_err(Error::invalid)?;
        let entry = EntryPoint(header.entry);
        let core = self.pool.core();
        let on_caller = match (&input, output) {
            (Input::Borrowed(src), Output::Borrowed(dst))
                if direct
                    && core.zero_copy()
                    && checked.input.align <= STAGE_ALIGN
                    && checked.output.align <= STAGE_ALIGN
                    && in_bytes + out_bytes >= SMALL_MAP_BYTES =>
            {
                Some((Place::Caller(*src as u64), Place::Caller(dst as u64)))
            }
            _ => None,
        };
        let (places, stage) = match on_caller {
            Some(places) => (places, None),
            None => {
                let mut stage = match self.stages.pop() {
                    Some(stage) => stage,
                    None => Stage::new(&self.pool)?,
                };
                if let Err(e) = stage.reserve(&self.pool, in_bytes, out_bytes) {
                    self.stages.push(stage);
                    return Err(e);
                }
                let src = match &input {
                    Input::Owned(bytes) => bytes.as_ptr().cast::<u8>(),
                    Input::Borrowed(ptr) => *ptr,
                };
                // No local worker touches a free stage.
                // SAFETY: `in_bytes` readable bytes at `src` (an owned vector,
                // or `Pending::borrowed`'s contract); the stage has room.
                unsafe { std::ptr::copy_nonoverlapping(src, stage.input_ptr(), in_bytes) };
                (stage.places(&self.pool), Some(stage))
            }
        };
        // Rank 0 built the header from the entry point's types.
        // SAFETY: the caller's buffers (`Pending::borrowed`: valid until the
        // task is done), or the stage this task owns until it finishes;
        // `entry` maps elements of the header's sizes.
        let running = unsafe {
            LocalTask::start(
                core,
                entry,
                checked.input,
                checked.output,
                checked.len,
                places.0,
                places.1,
            )
        };
        Ok(LocalRun {
            header,
            input,
            output,
            stage,
            task: running,
        })
    }

    /// The result of a finished task, its output copied out of its stage;
    /// `Err(task)`: it must run again, through a stage.
    fn finish(&mut self, run: LocalRun) -> Result<Done, Pending> {
        let LocalRun {
            header,
            input,
            output,
            stage,
            task,
        } = run;
        let finished = task.finish(self.pool.core());
        let out_bytes = header.check().map_or(0, |c| c.out_bytes);
        let done = match finished {
            Finished::Ok => Ok(match (&stage, output) {
                (None, _) => Vec::new(),
                (Some(stage), Output::Borrowed(dst)) => {
                    // SAFETY: the stage holds the task's `out_bytes` output
                    // bytes, written by the local workers (their slots are
                    // DONE); `dst` has room for them (`Pending::borrowed`'s contract).
                    unsafe { std::ptr::copy_nonoverlapping(stage.output_ptr(), dst, out_bytes) };
                    Vec::new()
                }
                (Some(stage), Output::Owned) => {
                    // The stage holds the task's `out_bytes` output bytes, as above.
                    stage.output()[..out_bytes].to_vec()
                }
            }),
            Finished::Failed(e) => Err(remote_error(&e)),
            Finished::Refused => {
                self.stages.extend(stage);
                return Err(Pending {
                    header,
                    in_bytes: header.check().map_or(0, |c| c.in_bytes),
                    out_bytes,
                    input,
                    output,
                });
            }
        };
        self.stages.extend(stage);
        Ok(done)
    }
}

impl Drop for Local {
    /// Waits for the tasks still running (a map that failed returns once its
    /// other chunks are done, so none is left but after a panic).
    fn drop(&mut self) {
        for run in self.running.drain(..) {
            run.task.wait(self.pool.core());
        }
    }
}

/// How a local failure travels back, the same as a worker rank's would.
fn remote_error(e: &Error) -> RemoteError {
    let (header, message) = ResultHeader::new(0, Err(e));
    header
        .failure(0, &message)
        .unwrap_or(RemoteError::Terminated)
}
