//! Panics that cross a process boundary: a worker's panic becomes the
//! caller's `Error::TaskPanicked`, with its message and location, so the
//! worker itself stays quiet, unless the panic cannot unwind and the worker
//! aborts: then it prints it.

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Silences panic messages in worker processes, and only there: a task's panic
/// is reported to the caller through its slot, with the location the hook
/// records here, so printing it in the worker too would only interleave noise
/// into the parent's stderr. A panic that cannot unwind (a failed debug check
/// on a null pointer, a panic escaping an `extern "C"` function, any panic
/// under `panic = "abort"`) never reaches the worker's `catch_unwind`: the
/// worker aborts, and its SIGABRT handler prints what the hook noted
/// ([`copy_noted`]), as Rust would have. (Whether a panic can unwind is not
/// known to a hook in stable Rust, hence the note.)
///
/// Installed once per program by the parent *before* it forks: a forked child
/// must not call `set_hook`, because another parent thread that was panicking
/// at the instant of the fork leaves the hook's lock taken forever in the child.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !crate::process::in_worker() {
                // A `Process` child's one thread is a copy of the parent's
                // launcher thread, whose name the standard message gives:
                // first say which process panicked, as Python's
                // "Process Process-1:" does.
                if let Some(name) = crate::process::process_name() {
                    use std::io::Write;
                    let pid = std::process::id();
                    let _ = writeln!(std::io::stderr(), "Process {name} (pid {pid}):");
                }
                return previous(info);
            }
            note(&format!("worker process {} {info}\n", std::process::id()));
            let location = info.location().map(|l| l.to_string());
            let _ = LOCATION.try_with(|cell| cell.set(location));
            PANICKED.store(true, Ordering::Relaxed);
        }));
    });
}

thread_local! {
    /// Where this thread's last panic was raised (`file:line:column`).
    static LOCATION: Cell<Option<String>> = const { Cell::new(None) };
}

/// Bytes of panic messages a worker keeps for its SIGABRT handler.
pub(crate) const NOTE_BYTES: usize = 1024;

/// The messages of the panics raised in the worker's current task, for its
/// SIGABRT handler: atomics, so that the handler may read them.
struct Note {
    /// Held by a thread appending (another panicking thread skips).
    writing: AtomicBool,
    len: AtomicUsize,
    bytes: [AtomicU8; NOTE_BYTES],
}

static NOTE: Note = Note {
    writing: AtomicBool::new(false),
    len: AtomicUsize::new(0),
    bytes: [const { AtomicU8::new(0) }; NOTE_BYTES],
};

/// Appends `text` to the note, as far as it has room.
fn note(text: &str) {
    if NOTE.writing.swap(true, Ordering::Acquire) {
        return;
    }
    let start = NOTE.len.load(Ordering::Relaxed).min(NOTE_BYTES);
    let room = &NOTE.bytes[start..];
    for (cell, &b) in room.iter().zip(text.as_bytes()) {
        cell.store(b, Ordering::Relaxed);
    }
    let end = start + room.len().min(text.len());
    NOTE.len.store(end, Ordering::Release);
    NOTE.writing.store(false, Ordering::Release);
}

/// Copies the noted panic messages into `out`; returns their length.
/// Async-signal-safe (atomic loads only), for the worker's SIGABRT handler.
pub(crate) fn copy_noted(out: &mut [u8; NOTE_BYTES]) -> usize {
    let len = NOTE.len.load(Ordering::Acquire).min(NOTE_BYTES);
    for (b, cell) in out.iter_mut().zip(&NOTE.bytes[..len]) {
        *b = cell.load(Ordering::Relaxed);
    }
    len
}

/// Called in a worker when a task (or the initializer) has ended: forgets
/// the panics it raised (caught, they are not what an abort would be
/// about), and returns where this thread's last one was raised. A panic
/// resumed with `resume_unwind` runs no hook: the location is that of the
/// last panic of this task, if any.
pub(crate) fn task_ended() -> Option<String> {
    // Most tasks raise no panic: one load, not a thread-local's, per task.
    if !PANICKED.load(Ordering::Relaxed) {
        return None;
    }
    PANICKED.store(false, Ordering::Relaxed);
    NOTE.len.store(0, Ordering::Relaxed);
    LOCATION.try_with(Cell::take).ok().flatten()
}

/// Whether the hook ran since the last [`task_ended`].
static PANICKED: AtomicBool = AtomicBool::new(false);

/// A caught panic's message: its payload if that is a string. Takes the
/// `Box` itself, so that the box cannot be mistaken for the payload.
pub(crate) fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
