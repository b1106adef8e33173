//! Length-prefixed frames over a stream socket: a little-endian `u32` length,
//! then that many bytes. The length is checked against a limit before any
//! byte of the body is read, and memory is reserved as the body's bytes
//! arrive (doubling), not as its header announces, so a peer cannot make the
//! reader allocate more than the limit, nor much more than it sent.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Instant;

/// Bytes of a frame's length prefix.
pub(crate) const HEADER_BYTES: usize = 4;

/// The default largest frame body (Python's managers have none; a bound keeps
/// one bad client from exhausting the server's memory).
pub(crate) const DEFAULT_LIMIT: usize = 64 << 20;

/// Reads frames from a stream, buffering so that a small frame costs one
/// `read` in the common case.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a reader tells its caller when a read timed out (`SO_RCVTIMEO`): when
/// the first byte of the pending frame arrived, if one has.
pub(crate) type Stalled = Option<Instant>;

impl FrameReader {
    pub(crate) fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
        }
    }

    /// The next frame's body, at most `limit` bytes. Each read that leaves
    /// the frame incomplete (it timed out, or brought only part of it) calls
    /// `on_stall` with the time the frame's first byte came, which ends the
    /// read with its error or lets it wait on: so a deadline on a whole frame
    /// holds however its bytes trickle in. End of stream is `UnexpectedEof`;
    /// a longer frame is `InvalidData`.
    pub(crate) fn next<'a>(
        &'a mut self,
        stream: &mut impl Read,
        limit: usize,
        mut on_stall: impl FnMut(Stalled) -> io::Result<()>,
    ) -> io::Result<&'a [u8]> {
        let mut first_byte: Stalled = (self.end > self.start).then(Instant::now);
        self.fill(stream, HEADER_BYTES, &mut first_byte, &mut on_stall)?;
        let mut len = [0u8; HEADER_BYTES];
        len.copy_from_slice(&self.buf[self.start..self.start + HEADER_BYTES]);
        let len = u32::from_le_bytes(len) as usize;
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes exceeds the limit of {limit} bytes"),
            ));
        }
        self.fill(stream, HEADER_BYTES + len, &mut first_byte, &mut on_stall)?;
        let body = self.start + HEADER_BYTES;
        self.start = body + len;
        Ok(&self.buf[body..body + len])
    }

    /// Reads until `need` bytes are buffered from `start`.
    fn fill(
        &mut self,
        stream: &mut impl Read,
        need: usize,
        first_byte: &mut Stalled,
        on_stall: &mut impl FnMut(Stalled) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.end - self.start >= need {
            return Ok(());
        }
        // Make room: move what is buffered to the front, grow if the frame
        // is larger than the buffer.
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < need {
            if self.end == self.buf.len() {
                // Full: grow by what has arrived (doubling), up to `need`.
                let grown = need.min(self.buf.len().saturating_mul(2));
                self.buf.resize(grown, 0);
            }
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    first_byte.get_or_insert_with(Instant::now);
                    self.end += n;
                    if self.end < need {
                        on_stall(*first_byte)?
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    on_stall(*first_byte)?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Starts a frame in `out`: a length prefix to be filled by [`seal`].
pub(crate) fn open(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; HEADER_BYTES]);
}

/// Writes the body length into the prefix [`open`] left; the body's length.
pub(crate) fn seal(out: &mut [u8]) -> usize {
    let len = out.len() - HEADER_BYTES;
    out[..HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    len
}

/// A frame holding `body`, ready to send.
pub(crate) fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    open(&mut out);
    out.extend_from_slice(body);
    seal(&mut out);
    out
}

/// Sends all of `bytes` with `MSG_NOSIGNAL` (`start::fork::send_all`).
pub(crate) fn send_all(fd: &impl AsFd, bytes: &[u8]) -> io::Result<()> {
    crate::start::fork::send_all(fd.as_fd(), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_stalls(_: Stalled) -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn frames_round_trip_in_one_buffer_and_split_across_reads() {
        let mut bytes = frame_of(b"hello");
        bytes.extend(frame_of(b""));
        bytes.extend(frame_of(&[7; 100_000])); // larger than the buffer
        let mut reader = FrameReader::new();
        let mut stream = &bytes[..];
        assert_eq!(
            reader.next(&mut stream, 1 << 20, never_stalls).unwrap(),
            b"hello"
        );
        assert_eq!(
            reader.next(&mut stream, 1 << 20, never_stalls).unwrap(),
            b""
        );
        assert_eq!(
            reader
                .next(&mut stream, 1 << 20, never_stalls)
                .unwrap()
                .len(),
            100_000
        );
        let eof = reader.next(&mut stream, 1 << 20, never_stalls).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_body_is_read() {
        let bytes = (u32::MAX).to_le_bytes();
        let mut reader = FrameReader::new();
        let err = reader
            .next(&mut &bytes[..], 1024, never_stalls)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            reader.buf.len() <= 64 << 10,
            "nothing was reserved for the body"
        );
    }

    /// Yields its bytes a few at a time.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn memory_follows_the_bytes_that_came_not_the_header() {
        let mut bytes = (60u32 << 20).to_le_bytes().to_vec();
        bytes.extend([1; 200_000]);
        let mut reader = FrameReader::new();
        let err = reader
            .next(&mut Trickle(&bytes), 64 << 20, never_stalls)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(reader.buf.len() <= 512 << 10, "{} bytes", reader.buf.len());
    }

    #[test]
    fn every_partial_read_asks_whether_to_go_on() {
        let bytes = frame_of(&[2; 10_000]);
        let mut reader = FrameReader::new();
        let mut asked = 0;
        let err = reader
            .next(&mut Trickle(&bytes), 1 << 20, |begun| {
                assert!(begun.is_some());
                asked += 1;
                if asked == 3 {
                    Err(io::ErrorKind::TimedOut.into())
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
