//! What a worker rank does: receive tasks from rank 0, run them in the rank's
//! local [`Pool`](crate::Pool), send the results back in the order the tasks
//! came; until STOP.
//!
//! Rank 0 keeps up to [`IN_FLIGHT`] tasks on each rank, and this loop never
//! blocks on one of them: while the local workers compute a task, it receives
//! the next one and sends the last result (`MPI_Isend`), polling both MPI and
//! the task slots of its local pool. Each task in flight has its own
//! [`Stage`] in the local pool's segment: MPI receives the input there, the
//! local workers read and write it where it lies, and MPI sends the output
//! from there, so the only copies are MPI's own.

// Unsafe code: runs local tasks on stages and sends their raw output.
#![allow(unsafe_code)]

use super::comm::{self, bytes_of, Backoff, Comm, Sending};
use super::local::{Finished, LocalTask, Stage};
use super::protocol::{
    ResultHeader, TaskHeader, IN_FLIGHT, RESULT, RESULT_DATA, STOP, TASK, TASK_DATA,
};
use crate::error::Error;
use crate::task::EntryPoint;
use crate::{Pool, StartMethod};
use std::collections::VecDeque;

/// Serves tasks from rank 0 in `pool` until rank 0 says STOP.
pub(crate) fn serve(comm: &Comm, pool: &Pool) -> Result<(), Error> {
    let mut free: Vec<Stage> = (0..IN_FLIGHT)
        .map(|_| Stage::new(pool))
        .collect::<Result<_, _>>()?;
    let mut running: VecDeque<Running> = VecDeque::new();
    let mut sending: Vec<Reply> = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        let mut progress = false;
        // A reply rank 0 has taken gives its stage back.
        let mut i = 0;
        while i < sending.len() {
            if sending[i].test() {
                free.push(sending.swap_remove(i).into_stage());
                progress = true;
            } else {
                i += 1;
            }
        }
        // Results go back in the order the tasks came (rank 0 checks it).
        while running.front_mut().is_some_and(|r| r.poll(pool)) {
            let done = running.pop_front().expect("checked");
            sending.push(Reply::send(comm, pool, done));
            progress = true;
        }
        // Rank 0 sends a task only to a rank with fewer than IN_FLIGHT, and
        // only after it received the reply that frees a stage here; until
        // that reply's send completes, the message waits.
        if let Some(stage) = free.pop() {
            match comm.try_probe(Some(0), None) {
                None => free.push(stage),
                Some((msg, status)) => {
                    progress = true;
                    match status.tag() {
                        STOP => {
                            comm::discard(msg, &status);
                            free.push(stage);
                            break;
                        }
                        TASK => {
                            running.push_back(Running::receive(comm, pool, stage, msg, &status))
                        }
                        // Data after a header this rank refused, or a stray:
                        // MPI knows its length, so it is drained without
                        // trusting anything.
                        _ => {
                            comm::discard(msg, &status);
                            free.push(stage);
                        }
                    }
                }
            }
        }
        if progress {
            backoff = Backoff::new();
        } else {
            backoff.snooze();
        }
    }
    // Rank 0 stops a rank only once it has every result, so nothing runs;
    // the replies' sends complete as they are dropped.
    for task in running {
        task.wait(pool);
    }
    drop(sending);
    Ok(())
}

/// A task this rank received, in its stage.
struct Running {
    id: u64,
    stage: Stage,
    out_bytes: usize,
    state: State,
}

enum State {
    Computing(LocalTask),
    /// Refused or failed before it ran; the reply says why.
    Failed(Error),
}

impl Running {
    /// Receives the task announced by the TASK message `msg` (and its input)
    /// into `stage`, and starts it in the local pool.
    fn receive(
        comm: &Comm,
        pool: &Pool,
        mut stage: Stage,
        msg: mpi::point_to_point::Message,
        status: &mpi::point_to_point::Status,
    ) -> Running {
        let header = match comm::receive_header::<TaskHeader>(msg, status) {
            Ok(header) => header,
            Err(bytes) => {
                return Running {
                    id: 0,
                    stage,
                    out_bytes: 0,
                    state: State::Failed(Error::invalid(format!("a task header of {bytes} bytes"))),
                }
            }
        };
        let (out_bytes, state) = match start(comm, pool, &mut stage, &header) {
            Ok((out_bytes, task)) => (out_bytes, State::Computing(task)),
            Err(e) => (0, State::Failed(e)),
        };
        Running {
            id: header.id,
            stage,
            out_bytes,
            state,
        }
    }

    /// Collects what the local workers finished; `true` once the task ended.
    fn poll(&mut self, pool: &Pool) -> bool {
        match &mut self.state {
            State::Computing(task) => task.poll(pool.core()),
            State::Failed(_) => true,
        }
    }

    /// How the task ended (`Ok(bytes of output)` in the stage); once
    /// [`poll`](Self::poll) returned `true`.
    fn outcome(state: State, out_bytes: usize, pool: &Pool) -> Result<usize, Error> {
        match state {
            State::Computing(task) => match task.finish(pool.core()) {
                Finished::Ok => Ok(out_bytes),
                Finished::Failed(e) => Err(e),
                // Only a caller's memory can be refused, never the segment.
                Finished::Refused => Err(Error::invalid(
                    "a local worker was refused its own pool's segment",
                )),
            },
            State::Failed(e) => Err(e),
        }
    }

    fn wait(self, pool: &Pool) {
        if let State::Computing(task) = self.state {
            task.wait(pool.core());
        }
    }
}

/// Checks `header`, receives its input into `stage` and starts the task;
/// its bytes of output and the task.
fn start(
    comm: &Comm,
    pool: &Pool,
    stage: &mut Stage,
    header: &TaskHeader,
) -> Result<(usize, LocalTask), Error> {
    let task = header.check().map_err(Error::invalid)?;
    // The entry point must be code of this executable; rank 0 runs the same
    // binary (checked when the pool started), so its offset means the same
    // function here.
    let entry = crate::start::check_code(StartMethod::Spawn, crate::task::code_at(header.entry))
        .map(EntryPoint)?;
    stage.reserve(pool, task.in_bytes, task.out_bytes)?;
    if task.in_bytes > 0 {
        let (msg, status) = comm.probe(Some(0), Some(TASK_DATA));
        let got = bytes_of(&status);
        if got != task.in_bytes {
            comm::discard(msg, &status);
            return Err(Error::invalid(format!(
                "the header announced {} input bytes, {got} came",
                task.in_bytes
            )));
        }
        // At least `in_bytes` (reserved above), which no local worker touches
        // while the stage is free; the count is below MAX_MESSAGE (checked).
        comm::receive_into(msg, &mut stage.input_mut()[..task.in_bytes]);
    }
    let (src, dst) = stage.places(pool);
    // Rank 0 built the header from the same types it instantiated the entry
    // point with, in the same binary, so `entry` maps elements of exactly
    // these sizes.
    // SAFETY: `len` inputs just received and room for `len` outputs in the
    // stage, in the pool's segment, 64-aligned, apart; the stage belongs to
    // this task until its reply is sent.
    let running = unsafe {
        LocalTask::start(
            pool.core(),
            entry,
            task.input,
            task.output,
            task.len,
            src,
            dst,
        )
    };
    Ok((task.out_bytes, running))
}

/// A result on its way to rank 0: the sends in progress, and what they read.
struct Reply {
    /// Declared first: dropped (completed) before the stage they read.
    sends: Vec<Sending>,
    stage: Stage,
}

impl Reply {
    /// Starts sending how `task` ended: the header, then its output or message.
    fn send(comm: &Comm, pool: &Pool, task: Running) -> Reply {
        let Running {
            id,
            stage,
            out_bytes,
            state,
        } = task;
        let outcome = Running::outcome(state, out_bytes, pool);
        let (header, message) = ResultHeader::new(id, outcome.as_ref().map(|&b| b));
        let header = zerocopy::IntoBytes::as_bytes(&header).to_vec();
        let mut sends = vec![comm.isend_owned(0, RESULT, header)];
        match outcome {
            Ok(0) => {}
            Ok(bytes) => {
                // SAFETY: the stage's output holds the task's `bytes` output
                // bytes, just written by the local workers; below MAX_MESSAGE
                // (checked); the stage is kept with the send.
                sends.push(unsafe { comm.isend_raw(0, RESULT_DATA, stage.output_ptr(), bytes) });
            }
            Err(_) if message.is_empty() => {}
            Err(_) => sends.push(comm.isend_owned(0, RESULT_DATA, message)),
        }
        Reply { sends, stage }
    }

    /// Whether every send is complete.
    fn test(&mut self) -> bool {
        self.sends.iter_mut().all(Sending::test)
    }

    fn into_stage(mut self) -> Stage {
        self.sends.clear();
        self.stage
    }
}
