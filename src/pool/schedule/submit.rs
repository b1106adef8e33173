//! Submission without waiting: `apply`'s one task and `map_async`'s chunks.

use super::layout::{check_chunksize, check_context, too_large, Elem, MapLayout};
use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::job::{Chunk, Job};
use crate::pool::result::Ticket;
use crate::sync::slot::TaskDesc;
use crate::task::EntryPoint;
use crate::Pod;
use std::mem::{size_of, MaybeUninit};

/// Submits every chunk of `items` at once and returns the job without waiting
/// (`map_async`). The input is copied into the pool's arena first, so the
/// caller's slice is free when this returns. `flags` go into every chunk's
/// description (`slot::WATCHED`).
pub(crate) fn submit_slice<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
    flags: u32,
    context: &[MaybeUninit<u8>],
) -> Result<Job, Error> {
    check_chunksize(core, chunksize)?;
    check_context(context)?;
    if items.is_empty() {
        return Ok(Job::new(None));
    }
    let len = items.len();
    let shape = MapLayout::new(len, Elem::of::<T>(), Elem::of::<U>()).ok_or_else(too_large)?;
    // The block holds `len` T's from its start.
    let block = core.alloc_block_from(shape.total, shape.align, crate::pod::bytes_of(items))?;
    let base = Core::block_offset(block);
    let mut job = Job::new(Some(block));
    for start in (0..len).step_by(chunksize) {
        let n = chunksize.min(len - start);
        let output = base + (shape.output_start + start * size_of::<U>()) as u64;
        let submitted = core.alloc_slot().and_then(|mut slot| {
            slot.describe(TaskDesc {
                entry: entry.0,
                input: base + (start * size_of::<T>()) as u64,
                output,
                len: n as u64,
                flags,
                ..TaskDesc::default()
            });
            if !context.is_empty() {
                slot.write_inline(context);
            }
            Ok(Chunk {
                slot: slot.publish()?.slot,
                output,
                len: n,
            })
        });
        match submitted {
            Ok(chunk) => job.push(chunk),
            Err(e) => {
                core.dispose(job);
                return Err(e);
            }
        }
    }
    Ok(job)
}

/// Submits one task, `apply`'s: `args` in the slot's inline area (or a block
/// of its own), the result of type `R` after them. `flags` go into its
/// description (`slot::WATCHED`).
pub(crate) fn submit_apply<Args: Pod, R: Pod>(
    core: &Core,
    entry: EntryPoint,
    args: Args,
    flags: u32,
) -> Result<Ticket, Error> {
    let mut slot = core.alloc_slot()?;
    // Arguments first, the result after them: never in the same bytes, so
    // that a task run again (retries, after its worker died) reads the
    // arguments it was given, not a result the first run wrote over them.
    let area = MapLayout::task(1, Elem::of::<Args>(), Elem::of::<R>()).ok_or_else(too_large)?;
    let at = slot.attach_area(&area, 0)?;
    let output = at + area.output_start as u64;
    // The token's inline area or block: unpublished, this thread's alone.
    slot.payload_items::<Args>(at, 1)[0].write(args);
    slot.describe(TaskDesc {
        entry: entry.0,
        input: at,
        output,
        len: 1,
        flags,
        ..TaskDesc::default()
    });
    let published = slot.publish()?;
    Ok(Ticket {
        slot: published.slot,
        output,
        block: published.block,
    })
}
