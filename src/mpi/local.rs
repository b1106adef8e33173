//! One task running in a rank's local [`Pool`](crate::Pool), without waiting
//! for it: its chunks are published as task slots and the rank's loop polls
//! them between MPI calls, so that a rank receives its next task and sends
//! its last result while its local workers compute.
//!
//! Every rank, rank 0 included, runs its tasks this way. Worker ranks run
//! them in [`Stage`] buffers (where MPI received the input); rank 0 runs its
//! share of a map straight on the caller's memory where the local workers
//! can reach it (`pool::zero_copy`), else through its own [`Stage`].

// Unsafe code: a local task over raw buffers (`LocalTask::start`).
#![allow(unsafe_code)]

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::schedule::{default_chunksize, Elem, Place};
use crate::sync::slot::{TaskDesc, REMOTE_INPUT, REMOTE_OUTPUT};
use crate::task::EntryPoint;
use crate::{Pool, SharedVec};

/// The chunks of one task in flight in a local pool. Its owner passes the
/// pool's [`Core`] to each call, and must [`poll`](Self::poll) it to the end
/// or [`wait`](Self::wait) for it before the memory it writes is freed or
/// the pool dropped.
pub(crate) struct LocalTask {
    /// Published chunks not yet collected.
    slots: Vec<u32>,
    error: Option<Error>,
    /// A local worker was refused the caller's memory.
    refused: bool,
}

/// How a [`LocalTask`] ended.
#[derive(Debug)]
pub(crate) enum Finished {
    Ok,
    Failed(Error),
    /// A local worker was refused the caller's memory (zero-copy is now off
    /// for the pool): run the task again through a [`Stage`]. Nothing was
    /// written that cannot be written again (no task here maps in place).
    Refused,
}

impl LocalTask {
    /// Publishes the chunks of `output[i] = entry(input[i])` for `i < len`,
    /// cut as a local map cuts them (four per local process).
    ///
    /// # Safety
    /// `src` holds `len` input elements and `dst` has room for `len` output
    /// elements (laid out as `input` and `output` say, aligned for them), in
    /// the pool's segment or in this process's memory; they do not overlap,
    /// and nothing else writes `src` or accesses `dst` until the task is
    /// finished ([`poll`](Self::poll) returned `true`, or the task was
    /// dropped). `entry` maps such elements.
    pub(crate) unsafe fn start(
        core: &Core,
        entry: EntryPoint,
        input: Elem,
        output: Elem,
        len: usize,
        src: Place,
        dst: Place,
    ) -> LocalTask {
        let mut task = LocalTask {
            slots: Vec::new(),
            error: None,
            refused: false,
        };
        if let Err(e) = core.ensure_running() {
            task.error = Some(e);
            return task;
        }
        let chunksize = default_chunksize(len, core.processes);
        let mut start = 0;
        while start < len {
            let n = chunksize.min(len - start);
            let (input_at, remote_in) = advance(src, start * input.size, REMOTE_INPUT);
            let (output_at, remote_out) = advance(dst, start * output.size, REMOTE_OUTPUT);
            let desc = TaskDesc {
                entry: entry.0,
                input: input_at,
                output: output_at,
                len: n as u64,
                flags: remote_in | remote_out,
                ..TaskDesc::default()
            };
            let published = core.alloc_slot().and_then(|mut slot| {
                slot.describe(desc);
                slot.publish()
            });
            match published {
                Ok(p) => task.slots.push(p.slot),
                Err(e) => {
                    task.fail(core, e);
                    break;
                }
            }
            start += n;
        }
        task
    }

    /// Records the first error and withdraws the chunks no worker has taken:
    /// the task has failed, they need not run.
    fn fail(&mut self, core: &Core, e: Error) {
        self.error.get_or_insert(e);
        self.slots.retain(|&slot| {
            if core.layout().slot(slot).cancel() {
                core.release_slot(slot);
                return false;
            }
            true
        });
    }

    /// Collects the chunks that have finished; `true` once all have.
    pub(crate) fn poll(&mut self, core: &Core) -> bool {
        let mut failure = None;
        let refused = &mut self.refused;
        self.slots.retain(|&slot| {
            if !core.layout().slot(slot).is_done() {
                return true;
            }
            match core.read_outcome::<()>(slot, 0) {
                Ok(()) => {}
                Err(Failure::AccessRefused(_)) => *refused = true,
                Err(f) => {
                    failure.get_or_insert(Error::from(f));
                }
            }
            core.release_slot(slot);
            false
        });
        if let Some(e) = failure {
            self.fail(core, e);
        }
        self.slots.is_empty()
    }

    /// How the task ended; only once [`poll`](Self::poll) returned `true`.
    pub(crate) fn finish(self, core: &Core) -> Finished {
        debug_assert!(self.slots.is_empty());
        match self.error {
            Some(e) => Finished::Failed(e),
            None if self.refused => {
                core.disable_zero_copy();
                Finished::Refused
            }
            None => Finished::Ok,
        }
    }
}

impl LocalTask {
    /// Withdraws the chunks no worker has taken and waits for the others:
    /// they write into memory the task's owner frees or reuses next.
    pub(crate) fn wait(mut self, core: &Core) {
        for slot in self.slots.drain(..) {
            let s = core.layout().slot(slot);
            if !s.cancel() {
                // Cannot hang on a dead worker: the supervisor finishes its slot.
                s.wait_done_with(false, None);
            }
            core.release_slot(slot);
        }
    }
}

/// The place `bytes` further on, and the flag that marks a caller's side.
fn advance(place: Place, bytes: usize, remote_flag: u32) -> (u64, u32) {
    match place {
        Place::Segment(offset) => (offset + bytes as u64, 0),
        Place::Caller(addr) => (addr + bytes as u64, remote_flag),
    }
}

/// Where a rank runs a task whose data must first be copied into its local
/// pool's segment: input and output areas there, grown to the largest task
/// seen and kept (their pages stay warm for the next task).
pub(crate) struct Stage {
    input: SharedVec<u8>,
    output: SharedVec<u8>,
}

impl Stage {
    const MIN: usize = 4096;

    pub(crate) fn new(pool: &Pool) -> Result<Stage, Error> {
        Ok(Stage {
            input: SharedVec::zeroed(pool, Self::MIN)?,
            output: SharedVec::zeroed(pool, Self::MIN)?,
        })
    }

    /// Makes room for `in_bytes` of input and `out_bytes` of output.
    pub(crate) fn reserve(
        &mut self,
        pool: &Pool,
        in_bytes: usize,
        out_bytes: usize,
    ) -> Result<(), Error> {
        for (buf, bytes) in [(&mut self.input, in_bytes), (&mut self.output, out_bytes)] {
            if buf.len() < bytes {
                // Freed first, so that the arena can reuse the space.
                *buf = SharedVec::zeroed(pool, Self::MIN)?;
                let grown = bytes
                    .checked_next_power_of_two()
                    .ok_or_else(|| Error::invalid("a task too large for a stage"))?;
                *buf = SharedVec::zeroed(pool, grown)?;
            }
        }
        Ok(())
    }

    /// The input area, while no local worker uses the stage (it is free, or
    /// its task finished).
    pub(crate) fn input_mut(&mut self) -> &mut [u8] {
        &mut self.input
    }

    /// The output area, under the same rule.
    pub(crate) fn output(&self) -> &[u8] {
        &self.output
    }

    pub(crate) fn input_ptr(&mut self) -> *mut u8 {
        self.input.as_mut_ptr()
    }

    pub(crate) fn output_ptr(&self) -> *const u8 {
        self.output.as_ptr()
    }

    /// The input and output areas as places in `pool`'s segment.
    pub(crate) fn places(&self, pool: &Pool) -> (Place, Place) {
        let layout = pool.core().layout();
        let at = |v: &SharedVec<u8>| {
            Place::Segment(
                layout
                    .offset_of(v.as_ptr(), v.len())
                    .expect("a SharedVec lies in its pool's segment"),
            )
        };
        (at(&self.input), at(&self.output))
    }
}
