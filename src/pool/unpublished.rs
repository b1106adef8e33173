//! [`UnpublishedSlot`]: a task slot the parent is preparing, owned by the
//! type system until it is published.
//!
//! The slot protocol (`docs/ARCHITECTURE.md`, "Slots") lets the parent write a
//! slot's description and payload only while the slot is `FREE` and handed to
//! it by the allocator. The token makes that the only way to reach them: it
//! is the one handle to a freshly allocated slot, writing takes `&mut self`,
//! and [`publish`](UnpublishedSlot::publish) consumes it. A token dropped
//! without publishing (an error path) gives its slot and block back.

// Unsafe code: writes an unpublished slot's description and payload.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::pool::core::Core;
use crate::pool::schedule::MapLayout;
use crate::shm::arena::Block;
use crate::sync::slot::{TaskDesc, INLINE_CAPACITY};
use crate::Pod;
use std::mem::{size_of, MaybeUninit};

/// A `FREE` slot this thread allocated and may write, with the arena block
/// its payload uses (if any).
pub(crate) struct UnpublishedSlot<'a> {
    core: &'a Core,
    index: u32,
    block: Option<Block>,
}

/// What a published task leaves the waiting side: its slot (to release once
/// the result is read) and its block (to free then).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) slot: u32,
    pub(crate) block: Option<Block>,
}

impl<'a> UnpublishedSlot<'a> {
    /// Wraps slot `index`, just handed out by the allocator.
    pub(crate) fn new(core: &'a Core, index: u32) -> UnpublishedSlot<'a> {
        UnpublishedSlot {
            core,
            index,
            block: None,
        }
    }

    /// The segment offset of the slot's inline payload area
    /// (`INLINE_CAPACITY` bytes, aligned to 64).
    #[inline]
    pub(crate) fn inline_offset(&self) -> u64 {
        self.core.layout().inline_offset(self.index)
    }

    /// Gives the task an arena block of `len` bytes aligned to `align`, freed
    /// with the token unless it is published; returns its segment offset.
    pub(crate) fn attach_block(&mut self, len: usize, align: usize) -> Result<u64, Error> {
        debug_assert!(self.block.is_none());
        let block = self.core.alloc_block(len, align)?;
        self.block = Some(block);
        Ok(Core::block_offset(block))
    }

    /// Gives the task the room `area` asks for: the slot's inline area after
    /// its first `after` bytes (the task's context) if it fits there, else an
    /// arena block ([`attach_block`](Self::attach_block)); returns its
    /// segment offset.
    pub(crate) fn attach_area(&mut self, area: &MapLayout, after: usize) -> Result<u64, Error> {
        let start = after.next_multiple_of(area.align);
        if area.fits_inline(start) {
            Ok(self.inline_offset() + start as u64)
        } else {
            self.attach_block(area.total, area.align)
        }
    }

    /// Writes the task's description.
    #[inline]
    pub(crate) fn describe(&mut self, desc: TaskDesc) {
        // SAFETY: the slot is FREE and this token is its only handle, borrowed
        // mutably (docs/ARCHITECTURE.md, "Slots").
        unsafe { *self.core.layout().slot(self.index).held().desc() = desc };
    }

    /// Writes `bytes` (at most `INLINE_CAPACITY`) at the start of the slot's
    /// inline area.
    pub(crate) fn write_inline(&mut self, bytes: &[MaybeUninit<u8>]) {
        let at = self.inline_offset();
        self.payload(at, bytes.len()).copy_from_slice(bytes);
    }

    /// The bytes `[at, at + len)` of the segment, which must lie in the
    /// task's own payload room: the slot's inline area or its block, this
    /// token's alone until it publishes. As bytes that may be uninitialized,
    /// so that values are copied in with their padding. Panics elsewhere (an
    /// offset this crate computed wrong).
    #[inline]
    pub(crate) fn payload(&mut self, at: u64, len: usize) -> &mut [MaybeUninit<u8>] {
        let within = |start: u64, room: usize| {
            at.checked_sub(start)
                .and_then(|off| usize::try_from(off).ok())
                .and_then(|off| off.checked_add(len))
                .is_some_and(|end| end <= room)
        };
        let inline = within(self.inline_offset(), INLINE_CAPACITY);
        let in_block = self
            .block
            .is_some_and(|b| within(Core::block_offset(b), b.len));
        assert!(inline || in_block, "a payload outside the task's own room");
        // Any bytes are a valid `MaybeUninit<u8>`.
        // SAFETY: inside the slot's inline area or the block (checked), which
        // nothing else reads or writes before the slot is published (this
        // token is their only handle, borrowed mutably).
        unsafe { std::slice::from_raw_parts_mut(self.core.layout().at(at).cast(), len) }
    }

    /// [`payload`](Self::payload) as `n` values of `T`, each written with one
    /// typed store. Panics if the bytes are not aligned for `T`.
    #[inline]
    pub(crate) fn payload_items<T: Pod>(&mut self, at: u64, n: usize) -> &mut [MaybeUninit<T>] {
        let len = n
            .checked_mul(size_of::<T>())
            .expect("a payload within the segment");
        let bytes = self.payload(at, len);
        assert!(
            bytes.as_ptr().cast::<T>().is_aligned(),
            "a misaligned payload"
        );
        // SAFETY: `n * size_of::<T>()` bytes of the task's own room
        // (checked by `payload`), aligned for `T` (checked); any bytes are a
        // valid `MaybeUninit<T>`.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), n) }
    }

    /// Publishes the task: workers may take it from now on, and the slot and
    /// block are the waiting side's to release. If the pool stopped meanwhile
    /// and no worker took the task, it is withdrawn, and the error says why
    /// (the token's drop then gives the slot and block back).
    pub(crate) fn publish(mut self) -> Result<Published, Error> {
        self.core.submit(self.index)?;
        let published = Published {
            slot: self.index,
            block: self.block.take(),
        };
        // Published: the slot is no longer this token's to release.
        std::mem::forget(self);
        Ok(published)
    }
}

impl Drop for UnpublishedSlot<'_> {
    fn drop(&mut self) {
        self.core.release_slot(self.index);
        if let Some(block) = self.block.take() {
            self.core.free_block(block);
        }
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use crate::pool::builder::PoolConfig;

    fn core() -> Core {
        Core::new(PoolConfig {
            processes: Some(1),
            ..PoolConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_dropped_token_gives_its_slot_and_block_back() {
        let core = core();
        let (index, offset) = {
            let mut slot = core.alloc_slot().unwrap();
            let offset = slot.attach_block(1 << 20, 64).unwrap();
            (slot.index, offset)
        };
        // Both were freed: the allocators hand out the same ones again.
        let mut again = core.alloc_slot().unwrap();
        assert_eq!(again.index, index);
        assert_eq!(again.attach_block(1 << 20, 64).unwrap(), offset);
    }

    #[test]
    fn a_token_refused_by_a_stopped_pool_gives_its_slot_back() {
        let core = core();
        core.advance_lifecycle(crate::pool::core::Lifecycle::Closed);
        let mut slot = core.alloc_slot().unwrap();
        let index = slot.index;
        slot.describe(TaskDesc::default());
        assert!(matches!(slot.publish(), Err(Error::Closed)));
        assert_eq!(core.alloc_slot().unwrap().index, index);
    }
}
