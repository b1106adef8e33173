//! The worker loop: what every worker process runs after it is forked.
//!
//! Claim a slot from the ring, run its entry point under `catch_unwind`, write
//! the outcome, finish the slot; when there is nothing to do, spin briefly, then
//! sleep on the header's wake word. Exit (status 0) once the pool is closed and
//! the ring is empty.

use crate::pool::slot::Outcome;
use crate::shm::layout::Layout;
use crate::sync::spin::SpinWait;
use crate::task::{EntryPoint, TaskIo};
use std::any::Any;
use std::panic::AssertUnwindSafe;

/// Serves tasks until the pool closes; returns the exit status.
pub(crate) fn serve(layout: Layout, index: u32) -> i32 {
    // A task's panic is reported to the caller through its slot; printing it in
    // the worker too would only interleave noise into the parent's stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let ring = layout.ring();
    let header = layout.header();
    loop {
        if let Some(slot) = ring.try_pop() {
            run(layout, slot, index);
            continue;
        }
        let mut spin = SpinWait::new();
        let mut popped = None;
        while popped.is_none() && spin.spin() {
            popped = ring.try_pop();
        }
        if let Some(slot) = popped {
            run(layout, slot, index);
            continue;
        }
        // `closing` first: once it is seen, every push made before close is too.
        if layout.is_closing() && ring.is_empty() {
            return 0;
        }
        header
            .work
            .park_unless(|| layout.is_closing() || !ring.is_empty(), None);
    }
}

/// Runs the task in slot `index` if this worker wins the claim.
fn run(layout: Layout, index: u32, me: u32) {
    let slot = layout.slot(index);
    if !slot.claim(me) {
        return; // a stale ring entry, or another worker was faster
    }
    // SAFETY: we hold RUNNING(me); the parent wrote desc before publishing.
    let desc = unsafe { *slot.desc() };
    let io = TaskIo {
        input: layout.at(desc.input),
        output: layout.at(desc.output),
        len: desc.len as usize,
    };
    // SAFETY: only the parent writes entries, with EntryPoint::new in this binary.
    let entry = unsafe { EntryPoint(desc.entry).resolve() };
    // SAFETY: the parent laid out input/output for exactly this entry point and
    // gives them to no one else while we hold the slot.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { entry(io) }));
    // SAFETY: still RUNNING(me): the outcome is ours to write.
    let desc = unsafe { slot.desc() };
    match result {
        Ok(()) => desc.outcome = Outcome::Returned as u32,
        Err(payload) => {
            let message = panic_message(&payload);
            let bytes = truncate(&message, crate::pool::slot::INLINE_CAPACITY);
            // SAFETY: the inline area is ours while RUNNING and holds at least
            // INLINE_CAPACITY bytes; `bytes` is no longer.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.inline_ptr(), bytes.len())
            };
            desc.outcome = Outcome::Panicked as u32;
            desc.detail = bytes.len() as u32;
            // A payload whose destructor panics must not take the worker down.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
    }
    slot.finish();
}

fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), b"h");
        assert_eq!(truncate("héllo", 3), "hé".as_bytes());
        assert_eq!(truncate("short", 100), b"short");
    }

    #[test]
    fn panic_messages_are_extracted() {
        let p: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&p), "static");
        let p: Box<dyn Any + Send> = Box::new(format!("formatted {}", 1));
        assert_eq!(panic_message(&p), "formatted 1");
        let p: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&p), "a non-string panic payload");
    }
}
