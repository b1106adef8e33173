//! Chunked `map`: how a slice becomes tasks and the results come back in order.
//!
//! Two ways to the data, chosen per call by [`map_raw`]:
//!
//! * **Where it lies** ([`run_where_it_lies`]): workers read the input and
//!   write the output in place, in the pool's segment (a [`SharedVec`]) or in
//!   the caller's own memory (`pool::zero_copy`). Only task descriptions
//!   travel; nothing of the data is copied through the parent.
//! * **Through the arena** (the fallback, when the kernel does not let workers
//!   reach the caller's memory, or `zero_copy(false)`): the parent copies chunk
//!   after chunk into one arena block and publishes each at once, keeps at
//!   most [`WINDOW`] chunks in flight, and copies each chunk's output out as
//!   soon as it is done, so copy-in, compute and copy-out overlap.
//!
//! [`SharedVec`]: crate::SharedVec

use crate::error::Error;
use crate::pool::core::{Core, Failure};
use crate::pool::job::{Chunk, Job};
use crate::pool::progress::Progress;
use crate::pool::result::Ticket;
use crate::remote::STAGE_ALIGN;
use crate::shm::arena::Block;
use crate::sync::slot::{TaskDesc, INLINE_CAPACITY, IN_PLACE, REMOTE_INPUT, REMOTE_OUTPUT, SPLIT};
use crate::task::EntryPoint;
use crate::Pod;
use std::collections::VecDeque;
use std::mem::{align_of, size_of};
use std::ops::Range;

/// At most this many chunks of one map are in flight (bounds slot usage when
/// chunks are tiny; with the default chunk size a map has far fewer).
pub(crate) const WINDOW: usize = 1024;

/// CPython's default: `ceil(len / (4 * processes))`, at least 1.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

/// The size and alignment of one input or output element: a Rust type's, or
/// what a C caller gives at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elem {
    pub(crate) size: usize,
    pub(crate) align: usize,
}

impl Elem {
    pub(crate) const fn of<T>() -> Elem {
        Elem {
            size: size_of::<T>(),
            align: align_of::<T>(),
        }
    }

    /// An element of `size` bytes whose type is unknown: aligned as far as an
    /// array of them can be (the largest power of two dividing `size`, at
    /// most 64).
    pub(crate) fn of_size(size: usize) -> Elem {
        let align = if size == 0 {
            1
        } else {
            1 << size.trailing_zeros().min(6)
        };
        Elem { size, align }
    }
}

/// One synchronous map: what runs on each chunk and how elements are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapCall<'a> {
    pub(crate) entry: EntryPoint,
    pub(crate) input: Elem,
    pub(crate) output: Elem,
    pub(crate) chunksize: usize,
    /// The outputs overwrite the inputs (`map_inplace`; `entry` is an
    /// in-place entry point and the input and output pointers are equal).
    pub(crate) in_place: bool,
    /// Bytes written into every chunk's inline slot area for its entry point
    /// to read (the C API's description of the call); empty for Rust maps.
    pub(crate) context: &'a [u8],
}

impl MapCall<'static> {
    /// A map of `T`s to `U`s through `entry`, with no call description.
    fn of<T, U>(entry: EntryPoint, chunksize: usize, in_place: bool) -> Self {
        MapCall {
            entry,
            input: Elem::of::<T>(),
            output: Elem::of::<U>(),
            chunksize,
            in_place,
            context: &[],
        }
    }
}

impl MapCall<'_> {
    fn flags(&self) -> u32 {
        if self.in_place {
            IN_PLACE
        } else {
            0
        }
    }
}

/// The byte layout of one map's block: inputs first, outputs after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    pub(crate) output_start: usize,
    pub(crate) total: usize,
    pub(crate) align: usize,
}

impl MapLayout {
    pub(crate) fn new(len: usize, input: Elem, output: Elem) -> Option<MapLayout> {
        let input_bytes = len.checked_mul(input.size)?;
        let align = input.align.max(output.align).max(64);
        let output_start = input_bytes.checked_next_multiple_of(align)?;
        let total = output_start.checked_add(len.checked_mul(output.size)?)?;
        Some(MapLayout {
            output_start,
            total,
            align: Self::block_align(total, align),
        })
    }

    /// One region for an in-place map: the outputs overwrite the inputs.
    pub(crate) fn in_place(len: usize, elem: Elem) -> Option<MapLayout> {
        let total = len.checked_mul(elem.size)?;
        Some(MapLayout {
            output_start: 0,
            total,
            align: Self::block_align(total, elem.align.max(64)),
        })
    }

    /// Large blocks start on a page: fewer pages touched, cleaner for THP.
    fn block_align(total: usize, align: usize) -> usize {
        if total >= 1 << 20 {
            align.max(4096)
        } else {
            align
        }
    }
}

/// Runs the chunk entry point `entry` (which maps `T`s to `U`s) over `items`
/// in chunks of `chunksize`; results in input order.
pub(crate) fn map_slice<T: Pod, U: Pod>(
    core: &Core,
    items: &[T],
    chunksize: usize,
    entry: EntryPoint,
) -> Result<Vec<U>, Error> {
    let call = MapCall::of::<T, U>(entry, chunksize, false);
    check(core, &call)?; // before the output is allocated
    let len = items.len();
    let mut out: Vec<U> = Vec::with_capacity(len);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: `items` holds `len` T's, borrowed for the whole call; `dst` has
    // room for `len` U's, apart from `items`, and only this call writes it.
    unsafe { map_raw(core, items.as_ptr().cast(), dst, len, call) }?;
    // SAFETY: map_raw returned Ok: all `len` outputs were written.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `data[i] = f(data[i])` through the in-place entry point `entry`.
pub(crate) fn map_inplace<T: Pod>(
    core: &Core,
    data: &mut [T],
    chunksize: usize,
    entry: EntryPoint,
) -> Result<(), Error> {
    let call = MapCall::of::<T, T>(entry, chunksize, true);
    let ptr = data.as_mut_ptr().cast::<u8>();
    // SAFETY: `data` is borrowed mutably for the whole call.
    unsafe { map_raw(core, ptr, ptr, data.len(), call) }
}

/// `output[i] = f(input[i])` through the map entry point `entry`; the
/// lengths were checked to match.
pub(crate) fn map_into<T: Pod, U: Pod>(
    core: &Core,
    input: &[T],
    output: &mut [U],
    chunksize: usize,
    entry: EntryPoint,
) -> Result<(), Error> {
    let call = MapCall::of::<T, U>(entry, chunksize, false);
    debug_assert_eq!(input.len(), output.len());
    let (src, dst) = (input.as_ptr().cast(), output.as_mut_ptr().cast());
    // SAFETY: both borrowed for the whole call; `&mut` keeps them apart.
    unsafe { map_raw(core, src, dst, input.len(), call) }
}

fn check_chunksize(core: &Core, chunksize: usize) -> Result<(), Error> {
    core.ensure_running()?;
    if chunksize == 0 {
        return Err(Error::invalid("chunksize must be at least 1"));
    }
    Ok(())
}

fn check(core: &Core, call: &MapCall<'_>) -> Result<(), Error> {
    check_chunksize(core, call.chunksize)?;
    if call.context.len() > INLINE_CAPACITY {
        return Err(Error::invalid("a map's call description is too large"));
    }
    Ok(())
}

/// The one path of every synchronous map: `dst[i] = f(src[i])` for `i < len`,
/// where the data lies if the workers can reach it, else through the arena.
/// The C API calls it directly.
///
/// # Safety
/// `src` holds `len` initialized input elements and `dst` has room for `len`
/// output elements (laid out as `call` says, aligned for them), both valid
/// until this returns; nothing else writes `src` or accesses `dst`
/// meanwhile; they are the same pointer if `call.in_place`, else they do not
/// overlap. `call.entry` maps such elements.
pub(crate) unsafe fn map_raw(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
) -> Result<(), Error> {
    check(core, &call)?;
    if len == 0 {
        return Ok(());
    }
    let progress = Progress::start(core, Some(len));
    // SAFETY: forwarded contract.
    unsafe { map_raw_with(core, src, dst, len, call, &progress) }?;
    progress.finish();
    Ok(())
}

/// [`map_raw`], advancing `progress` as chunks finish.
unsafe fn map_raw_with(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let (Some(in_bytes), Some(out_bytes)) = (
        len.checked_mul(call.input.size),
        len.checked_mul(call.output.size),
    ) else {
        return Err(Error::invalid("map input too large"));
    };
    let input = place_of(core, src, in_bytes, call.input.align);
    let output = place_of(core, dst.cast_const(), out_bytes, call.output.align);
    let direct = input.zip(output).filter(|&(i, o)| {
        let in_caller = matches!(i, Place::Caller(_)) || matches!(o, Place::Caller(_));
        !in_caller || in_bytes + out_bytes >= SMALL_MAP_BYTES
    });
    let Some((input, output)) = direct else {
        // SAFETY: forwarded contract.
        return unsafe { through_arena(core, src, dst, len, call, progress) };
    };
    if matches!(output, Place::Caller(_)) {
        // Workers would fault the fresh output in one 4 KiB page at a time
        // inside process_vm_writev; one bulk fault (huge pages where allowed)
        // is faster. Measured in docs/PERFORMANCE.md, "Zero-copy maps".
        prefault(dst, out_bytes);
    }
    let redo = run_where_it_lies(core, len, call, Span { input, output }, progress)?;
    if !redo.is_empty() {
        // The kernel refused a worker the caller's memory: from now on this
        // pool copies, and what was refused is done that way now.
        core.disable_zero_copy();
    }
    for range in redo {
        // SAFETY: a sub-range of the caller's buffers, which no worker
        // touches any more (every chunk of the first pass is finished).
        unsafe {
            through_arena(
                core,
                src.add(range.start * call.input.size),
                dst.add(range.start * call.output.size),
                range.len(),
                call,
                progress,
            )
        }?;
    }
    Ok(())
}

/// Below this (input + output bytes), a map over the caller's memory copies
/// through a small arena block instead: a cached `memcpy` in the parent is
/// several times faster than `process_vm_readv`/`writev` (32 against 6.5 GB/s
/// here, `docs/PERFORMANCE.md`, "Zero-copy maps"), and the block it uses is
/// bounded by this size.
pub(crate) const SMALL_MAP_BYTES: usize = 2 << 20;

/// Where the workers find `bytes` bytes at `ptr`: in the segment, or in the
/// caller's memory if they can reach it; `None`: only through the arena.
fn place_of(core: &Core, ptr: *const u8, bytes: usize, align: usize) -> Option<Place> {
    if let Some(offset) = core.layout().offset_of(ptr, bytes) {
        return Some(Place::Segment(offset));
    }
    (core.zero_copy() && align <= STAGE_ALIGN).then_some(Place::Caller(ptr as u64))
}

/// The arena path of [`map_raw`] (same contract): a large map uses two parent
/// threads, since the parent's copies are then the bottleneck.
unsafe fn through_arena(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let bytes = len * (call.input.size + call.output.size);
    // Where to cut for two parent threads: on a chunk boundary, so the tasks
    // are the same as without the cut.
    let cut = (len / 2).next_multiple_of(call.chunksize);
    if bytes < PARALLEL_BYTES || cut >= len {
        // SAFETY: forwarded contract.
        return unsafe { map_part(core, src, dst, len, call, progress) };
    }
    let (src_b, dst_b) = (
        SendPtr(src.wrapping_add(cut * call.input.size).cast_mut()),
        SendPtr(dst.wrapping_add(cut * call.output.size)),
    );
    let (a, b) = std::thread::scope(|scope| {
        let other = scope.spawn(move || {
            let (src_b, dst_b) = (src_b, dst_b);
            // SAFETY: the second half of both buffers, disjoint from the first.
            unsafe { map_part(core, src_b.0, dst_b.0, len - cut, call, progress) }
        });
        // SAFETY: the first half.
        let mine = unsafe { map_part(core, src, dst, cut, call, progress) };
        (
            mine,
            other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    a.and(b)
}

/// A pointer handed to the second copying thread of [`through_arena`].
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: the two threads work on disjoint halves of the buffers, and the
// scope joins the second before the caller's borrow ends.
unsafe impl Send for SendPtr {}

/// A map at least this large (input + output bytes) uses two parent threads.
const PARALLEL_BYTES: usize = 8 << 20;

/// Maps `len` elements from `src` into `dst` through one arena block
/// ([`map_raw`]'s contract).
unsafe fn map_part(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
    progress: &Progress,
) -> Result<(), Error> {
    let shape = if call.in_place {
        MapLayout::in_place(len, call.input)
    } else {
        MapLayout::new(len, call.input, call.output)
    }
    .ok_or_else(|| Error::invalid("map input too large"))?;
    let block = core.alloc_block(shape.total, shape.align)?;
    prefault(dst, len * call.output.size);
    // SAFETY: forwarded contract.
    let result = unsafe { run_chunks(core, src, dst, len, call, (block, shape), progress) };
    core.free_block(block);
    result
}

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
) -> Result<Job, Error> {
    check_chunksize(core, chunksize)?;
    if items.is_empty() {
        return Ok(Job::new(None));
    }
    let len = items.len();
    let shape = MapLayout::new(len, Elem::of::<T>(), Elem::of::<U>())
        .ok_or_else(|| Error::invalid("map input too large"))?;
    let block = core.alloc_block(shape.total, shape.align)?;
    let base = Core::block_offset(block);
    // SAFETY: the fresh block holds `len` T's from its start; no worker sees it
    // before the chunks are published.
    unsafe {
        std::ptr::copy_nonoverlapping(items.as_ptr(), core.layout().at(base).cast::<T>(), len)
    };
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
    let output_start = size_of::<Args>().next_multiple_of(align_of::<R>());
    let size = output_start + size_of::<R>();
    let align = align_of::<Args>().max(align_of::<R>());
    let at = if size <= INLINE_CAPACITY && align <= 64 {
        slot.inline_offset()
    } else {
        slot.attach_block(size, align)?
    };
    let output = at + output_start as u64;
    // SAFETY: `at` is the token's inline area or block, aligned for Args;
    // the slot is unpublished, so this thread has them to itself.
    unsafe { core.layout().at(at).cast::<Args>().write(args) };
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

/// Where one side of a map lies, as a worker finds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place {
    /// In the pool's segment, at this offset (a `SharedVec`).
    Segment(u64),
    /// In the caller's own memory, at this address (`pool::zero_copy`).
    Caller(u64),
}

impl Place {
    /// The place `bytes` further on, the `flags` bit that names a caller side,
    /// and the value for the task description.
    fn advance(self, bytes: usize, remote_flag: u32) -> (u64, u32) {
        match self {
            Place::Segment(offset) => (offset + bytes as u64, 0),
            Place::Caller(addr) => (addr + bytes as u64, remote_flag),
        }
    }
}

/// Where a map reads and writes: element `i` is read at `input + i *
/// input.size` and written at `output + i * output.size` (sizes from the
/// [`MapCall`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) input: Place,
    pub(crate) output: Place,
}

/// [`SPLIT`] unless the chunk cannot run twice (in place).
fn split_flag(call: &MapCall<'_>) -> u32 {
    if call.in_place {
        0
    } else {
        SPLIT
    }
}

/// The two halves to run again when a [`SPLIT`] chunk over `range` failed
/// with `failure` after `used` retries: when its worker died, retries are
/// left, and it has more than one element. So the other elements' results
/// come back, and the one that kills its worker is cornered.
fn halves(
    core: &Core,
    call: &MapCall<'_>,
    failure: &Failure,
    range: &Range<usize>,
    used: u32,
) -> Option<[Range<usize>; 2]> {
    let died = matches!(failure, Failure::WorkerDied { .. });
    if !died || call.in_place || used >= core.config.retries || range.len() < 2 {
        return None;
    }
    let mid = range.start + range.len() / 2;
    core.stats.retried();
    Some([range.start..mid, mid..range.end])
}

/// Allocates, describes and publishes one chunk; on failure the slot goes
/// back with its token.
fn submit_chunk(core: &Core, desc: TaskDesc, context: &[u8]) -> Result<u32, Error> {
    let mut slot = core.alloc_slot()?;
    slot.describe(desc);
    if !context.is_empty() {
        slot.write_inline(context);
    }
    Ok(slot.publish()?.slot)
}

/// In which order a [`Window`] hands back finished chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collect {
    /// Oldest first, spinning briefly on each: the arena path copies each
    /// chunk's output out as soon as it is done, overlapping the workers.
    InOrder,
    /// Oldest first while chunks are still being submitted; once all are, the
    /// newest first, sleeping without a spin: the parent has nothing else to
    /// do, on 2 CPUs a spinning parent takes time from the workers, and the
    /// older chunks are usually done when it wakes (one wake-up per map
    /// instead of one per chunk).
    NewestLast,
}

/// What a [`Window`] hands back.
enum Collected<T> {
    /// The chunk finished (its slot is `DONE`); release the slot after reading it.
    Done(u32, T),
    /// The window was halted and the chunk withdrawn before a worker took it
    /// (its slot is released).
    Withdrawn(T),
}

/// The chunks of one synchronous map in flight: the one home of the windowed
/// submit, collect, and withdraw-on-first-failure loop. At most [`WINDOW`]
/// chunks are in flight; once halted (an error, or a refusal to redo), no
/// more are accepted, the queued ones are withdrawn and the running ones
/// awaited: they write into the caller's memory or the map's block, which must
/// not be freed or read before they finish.
struct Window<'a, T> {
    core: &'a Core,
    order: Collect,
    in_flight: VecDeque<(u32, T)>,
    error: Option<Error>,
    halted: bool,
}

impl<'a, T> Window<'a, T> {
    fn new(core: &'a Core, order: Collect) -> Self {
        Window {
            core,
            order,
            in_flight: VecDeque::new(),
            error: None,
            halted: false,
        }
    }

    /// Whether another chunk may be submitted now.
    fn accepts(&self) -> bool {
        !self.halted && self.in_flight.len() < WINDOW
    }

    /// Records a submission; a failed one halts the window.
    fn push(&mut self, submitted: Result<u32, Error>, tag: T) {
        match submitted {
            Ok(slot) => self.in_flight.push_back((slot, tag)),
            Err(e) => self.fail(e),
        }
    }

    /// Records the map's first error and halts.
    fn fail(&mut self, e: Error) {
        self.error.get_or_insert(e);
        self.halted = true;
    }

    /// Stops submitting without an error.
    fn halt(&mut self) {
        self.halted = true;
    }

    fn is_halted(&self) -> bool {
        self.halted
    }

    /// The next finished or withdrawn chunk; `all_submitted`: nothing more
    /// will be pushed. `None` once nothing is in flight.
    fn next(&mut self, all_submitted: bool) -> Option<Collected<T>> {
        let all_submitted = all_submitted || self.halted;
        let newest = self.order == Collect::NewestLast && all_submitted;
        let (slot, tag) = if newest {
            self.in_flight.pop_back()?
        } else {
            self.in_flight.pop_front()?
        };
        let layout = self.core.layout();
        if self.halted && layout.slot(slot).cancel() {
            self.core.release_slot(slot);
            return Some(Collected::Withdrawn(tag));
        }
        // Cannot hang on a dead worker: the supervisor finishes its slot.
        let spin = self.order == Collect::InOrder || !all_submitted;
        layout.slot(slot).wait_done_with(spin, None);
        Some(Collected::Done(slot, tag))
    }

    /// The map's result, once [`next`](Self::next) has returned `None`.
    fn finish(self) -> Result<(), Error> {
        debug_assert!(self.in_flight.is_empty());
        self.error.map_or(Ok(()), Err)
    }
}

/// Runs `call` over `len` elements where they lie ([`Span`]): only task
/// descriptions travel, no element is copied by the parent.
///
/// Returns the element ranges a worker was refused access to the caller's
/// memory for, having written nothing that cannot be written again: the
/// caller redoes them another way. After the first refusal the remaining
/// chunks are not submitted but returned too.
pub(crate) fn run_where_it_lies(
    core: &Core,
    len: usize,
    call: MapCall<'_>,
    at: Span,
    progress: &Progress,
) -> Result<Vec<Range<usize>>, Error> {
    let chunksize = call.chunksize;
    let chunks = len.div_ceil(chunksize);
    let mut window = Window::new(core, Collect::NewestLast);
    let mut next_chunk = 0;
    let mut redo: Vec<Range<usize>> = Vec::new();
    let submit = |range: Range<usize>, retries_used: u32| {
        let (input, remote_in) = at
            .input
            .advance(range.start * call.input.size, REMOTE_INPUT);
        let (output, remote_out) = at
            .output
            .advance(range.start * call.output.size, REMOTE_OUTPUT);
        let desc = TaskDesc {
            entry: call.entry.0,
            input,
            output,
            len: range.len() as u64,
            flags: call.flags() | split_flag(&call) | remote_in | remote_out,
            retries_used,
            ..TaskDesc::default()
        };
        submit_chunk(core, desc, call.context)
    };
    loop {
        while window.accepts() && next_chunk < chunks {
            let start = next_chunk * chunksize;
            let range = start..start + chunksize.min(len - start);
            window.push(submit(range.clone(), 0), (range, 0));
            next_chunk += 1;
        }
        match window.next(next_chunk == chunks) {
            None => break,
            Some(Collected::Withdrawn((range, _))) => redo.push(range),
            Some(Collected::Done(slot, (range, used))) => {
                match core.read_outcome::<()>(slot, 0) {
                    Ok(()) => progress.advance(range.len()),
                    Err(Failure::AccessRefused(refused)) if !(call.in_place && refused.wrote) => {
                        redo.push(range);
                        window.halt();
                    }
                    Err(failure) => match halves(core, &call, &failure, &range, used) {
                        Some([a, b]) if !window.is_halted() => {
                            window.push(submit(a.clone(), used + 1), (a, used + 1));
                            window.push(submit(b.clone(), used + 1), (b, used + 1));
                        }
                        _ => window.fail(Error::from(failure).covering(range)),
                    },
                }
                core.release_slot(slot);
            }
        }
    }
    let halted = window.is_halted();
    window.finish()?;
    if halted && next_chunk < chunks {
        redo.push(next_chunk * chunksize..len);
    }
    Ok(redo)
}

/// Runs the chunks of an arena map ([`map_raw`]'s contract for the buffers):
/// copy in, publish, collect in order, copy out.
unsafe fn run_chunks(
    core: &Core,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    call: MapCall<'_>,
    (block, shape): (Block, MapLayout),
    progress: &Progress,
) -> Result<(), Error> {
    let layout = core.layout();
    let chunksize = call.chunksize;
    let (in_size, out_size) = (call.input.size, call.output.size);
    let chunks = len.div_ceil(chunksize);
    let base = Core::block_offset(block);
    let input_at = |i: usize| base + (i * in_size) as u64;
    let output_at = |i: usize| base + (shape.output_start + i * out_size) as u64;
    let mut window = Window::new(core, Collect::InOrder);
    let mut next_chunk = 0;
    let submit = |start: usize, n: usize, retries_used: u32| {
        let desc = TaskDesc {
            entry: call.entry.0,
            input: input_at(start),
            output: output_at(start),
            len: n as u64,
            flags: call.flags() | split_flag(&call),
            retries_used,
            ..TaskDesc::default()
        };
        submit_chunk(core, desc, call.context)
    };
    loop {
        while window.accepts() && next_chunk < chunks {
            let start = next_chunk * chunksize;
            let n = chunksize.min(len - start);
            // SAFETY: the block holds `len` inputs from `input_at(0)`; this
            // chunk's range is not yet published, so no worker reads it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.add(start * in_size),
                    layout.at(input_at(start)),
                    n * in_size,
                );
            }
            window.push(submit(start, n, 0), (start, n, 0));
            next_chunk += 1;
        }
        match window.next(next_chunk == chunks) {
            None => break,
            Some(Collected::Withdrawn(_)) => {}
            Some(Collected::Done(slot, (start, n, used))) => {
                match core.read_outcome::<()>(slot, 0) {
                    Ok(()) if !window.is_halted() => {
                        progress.advance(n);
                        // SAFETY: the worker wrote `n` outputs at output_at(start)
                        // before DONE (observed with Acquire); `dst` has room for
                        // `len` ≥ start + n.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                layout.at(output_at(start)),
                                dst.add(start * out_size),
                                n * out_size,
                            );
                        }
                    }
                    Ok(()) => {}
                    // The inputs are still in the block: a worker only reads them.
                    Err(failure) => {
                        match halves(core, &call, &failure, &(start..start + n), used) {
                            Some([a, b]) if !window.is_halted() => {
                                window.push(
                                    submit(a.start, a.len(), used + 1),
                                    (a.start, a.len(), used + 1),
                                );
                                window.push(
                                    submit(b.start, b.len(), used + 1),
                                    (b.start, b.len(), used + 1),
                                );
                            }
                            _ => window.fail(Error::from(failure).covering(start..start + n)),
                        }
                    }
                }
                core.release_slot(slot);
            }
        }
    }
    window.finish()
}

/// The whole pages inside `[ptr, ptr + bytes)`.
fn whole_pages(ptr: *mut u8, bytes: usize) -> (usize, usize) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = ((ptr as usize + bytes) / PAGE * PAGE).max(start);
    (start, end)
}

/// Below this, a fresh output buffer is left to fault page by page.
const PREFAULT_BYTES: usize = 4 << 20;

/// Faults in a large, fresh output buffer in one call instead of one page
/// fault per 4 KiB as the results are copied in (~1.1 µs each here, more than
/// the copy itself), and asks for huge pages where the kernel allows them.
/// Only advice: if the kernel refuses, the copy faults pages as usual.
pub(crate) fn prefault(ptr: *mut u8, bytes: usize) {
    if bytes < PREFAULT_BYTES {
        return;
    }
    let (start, end) = whole_pages(ptr, bytes);
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_POPULATE_WRITE] {
        // SAFETY: [start, end) lies inside the caller's allocation; neither advice
        // changes the contents of memory (the buffer is uninitialized anyway).
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunksize_matches_cpython() {
        // CPython: chunksize, extra = divmod(len, 4 * processes); if extra: chunksize += 1
        assert_eq!(default_chunksize(10, 4), 1);
        assert_eq!(default_chunksize(100, 2), 13);
        assert_eq!(default_chunksize(10_000_000, 2), 1_250_000);
        assert_eq!(default_chunksize(0, 2), 1);
        assert_eq!(default_chunksize(1, 8), 1);
    }

    #[test]
    fn map_layout_aligns_outputs_and_rejects_overflow() {
        let m = MapLayout::new(3, Elem::of::<u8>(), Elem::of::<f64>()).unwrap();
        assert_eq!(m.output_start, 64);
        assert_eq!(m.total, 64 + 24);
        let f64s = Elem::of::<f64>();
        let big = MapLayout::new(1 << 20, f64s, f64s).unwrap();
        assert_eq!(big.align, 4096);
        let u64s = Elem::of::<u64>();
        assert_eq!(MapLayout::new(usize::MAX / 4, u64s, u64s), None);
    }
}
