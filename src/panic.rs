//! Panics that cross a process boundary: a worker's panic becomes the
//! caller's `Error::TaskPanicked`, so the worker itself stays quiet.

use std::any::Any;

/// Silences panic messages in worker processes, and only there: a task's panic
/// is reported to the caller through its slot, so printing it in the worker
/// too would only interleave noise into the parent's stderr.
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
                previous(info)
            }
        }));
    });
}

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
