//! The message `[42, None, 'hello']` of Python's `Queue` and `Pipe` examples, as plain data.

use std::fmt;
use zerocopy::{FromBytes, Immutable};

/// `[number, extra or None, 'text']`, fixed size so it can cross processes as
/// bytes.
#[derive(Clone, Copy, FromBytes, Immutable)]
#[repr(C)]
pub struct Message {
    pub number: i64,
    /// 0: `None`; else `Some(extra)`.
    pub has_extra: u64,
    pub extra: i64,
    pub text: [u8; 16],
}
shmpool::pod!(Message);

impl Message {
    /// `[42, None, 'hello']`.
    pub fn example() -> Message {
        let mut text = [0u8; 16];
        text[..5].copy_from_slice(b"hello");
        Message {
            number: 42,
            has_extra: 0,
            extra: 0,
            text,
        }
    }
}

impl fmt::Display for Message {
    /// As Python prints the list: `[42, None, 'hello']`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.text);
        let extra = if self.has_extra == 0 {
            "None".to_owned()
        } else {
            self.extra.to_string()
        };
        write!(
            f,
            "[{}, {extra}, '{}']",
            self.number,
            text.trim_end_matches('\0')
        )
    }
}
