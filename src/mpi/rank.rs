//! What a worker rank does: receive a task from rank 0, run it in the rank's
//! local [`Pool`](crate::Pool), send the result back; until STOP.
//!
//! The task's input is received straight into the local pool's shared
//! segment and its output is computed there, so the local workers read and
//! write the data where it lies, and MPI sends it from there: the only copies
//! are MPI's own.

use super::comm::{self, bytes_of, Comm};
use super::protocol::{ResultHeader, TaskHeader, RESULT, RESULT_DATA, STOP, TASK, TASK_DATA};
use crate::error::Error;
use crate::pool::schedule::{self, MapCall};
use crate::task::EntryPoint;
use crate::{Pool, SharedVec, StartMethod};

/// Serves tasks from rank 0 in `pool` until rank 0 says STOP.
pub(crate) fn serve(comm: &Comm, pool: &Pool) -> Result<(), Error> {
    let mut buffers = Buffers::new(pool)?;
    loop {
        let (msg, status) = comm.probe(Some(0), None);
        match status.tag() {
            STOP => {
                comm::discard(msg, &status);
                return Ok(());
            }
            TASK => {
                let (id, outcome) = match comm::receive_header::<TaskHeader>(msg, &status) {
                    Ok(header) => (header.id, run(comm, pool, &mut buffers, &header)),
                    Err(bytes) => (
                        0,
                        Err(Error::invalid(format!("a task header of {bytes} bytes"))),
                    ),
                };
                reply(comm, id, outcome, &buffers);
            }
            // Data after a header this rank refused, or a stray: MPI knows
            // its length, so it is drained without trusting anything.
            _ => comm::discard(msg, &status),
        }
    }
}

/// Runs one task; `Ok(bytes of output)` in `buffers.output`.
fn run(
    comm: &Comm,
    pool: &Pool,
    buffers: &mut Buffers,
    header: &TaskHeader,
) -> Result<usize, Error> {
    let task = header.check().map_err(Error::invalid)?;
    // The entry point must be code of this executable; rank 0 runs the same
    // binary (checked when the pool started), so its offset means the same
    // function here.
    let entry = crate::start::check_code(StartMethod::Spawn, crate::task::code_at(header.entry))
        .map(EntryPoint)?;
    buffers.reserve(pool, task.in_bytes, task.out_bytes)?;
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
        // SAFETY: the input buffer holds at least `in_bytes` bytes (reserved
        // above) that no local worker touches between tasks; the count is
        // below MAX_MESSAGE (checked).
        unsafe { comm::receive_raw(msg, buffers.input.as_mut_ptr(), task.in_bytes) };
    }
    let call = MapCall {
        entry,
        input: task.input,
        output: task.output,
        chunksize: schedule::default_chunksize(task.len, pool.processes()),
        in_place: false,
        fold: false,
        context: &[],
    };
    // Rank 0 built the header from the same types it instantiated the entry
    // point with, in the same binary, so `entry` maps elements of exactly
    // these sizes.
    // SAFETY: `len` inputs just received and room for `len` outputs, in the
    // pool's segment, 64-aligned, apart, used only by this call.
    unsafe {
        schedule::map_raw(
            pool.core(),
            buffers.input.as_ptr(),
            buffers.output.as_mut_ptr(),
            task.len,
            call,
        )
    }?;
    Ok(task.out_bytes)
}

/// Sends how task `id` ended: the header, then its output or message.
fn reply(comm: &Comm, id: u64, outcome: Result<usize, Error>, buffers: &Buffers) {
    let (header, message) = ResultHeader::new(id, outcome.as_ref().map(|&b| b));
    comm.send(0, RESULT, zerocopy::IntoBytes::as_bytes(&header));
    match outcome {
        Ok(0) => {}
        Ok(bytes) => {
            // SAFETY: the output buffer holds the task's `bytes` output bytes,
            // just written by the local map; below MAX_MESSAGE (checked).
            unsafe { comm.send_raw(0, RESULT_DATA, buffers.output.as_ptr(), bytes) };
        }
        Err(_) if message.is_empty() => {}
        Err(_) => comm.send(0, RESULT_DATA, &message),
    }
}

/// The rank's input and output areas in its local pool's segment, grown to
/// the largest task seen.
struct Buffers {
    input: SharedVec<u8>,
    output: SharedVec<u8>,
}

impl Buffers {
    const MIN: usize = 4096;

    fn new(pool: &Pool) -> Result<Buffers, Error> {
        Ok(Buffers {
            input: SharedVec::zeroed(pool, Self::MIN)?,
            output: SharedVec::zeroed(pool, Self::MIN)?,
        })
    }

    fn reserve(&mut self, pool: &Pool, in_bytes: usize, out_bytes: usize) -> Result<(), Error> {
        for (buf, bytes) in [(&mut self.input, in_bytes), (&mut self.output, out_bytes)] {
            if buf.len() < bytes {
                // Freed first, so that the arena can reuse the space.
                *buf = SharedVec::zeroed(pool, Self::MIN)?;
                *buf = SharedVec::zeroed(pool, bytes.next_power_of_two())?;
            }
        }
        Ok(())
    }
}
