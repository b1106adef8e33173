//! [`SharedMemory`]: a named block of shared memory in `/dev/shm`, like Python's
//! `multiprocessing.shared_memory.SharedMemory`.

// Unsafe code: a named shared mapping, seen as bytes.
#![allow(unsafe_code)]

use crate::error::Error;
use crate::shm::segment::Mapping;
use crate::tracker::{self, Kind};
use rustix::fs::Mode;
use rustix::shm::OFlags;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// A named shared-memory object (`shm_open`), mapped into this process.
///
/// Unlike a pool's own segment, which has no name and cannot leak, this one
/// can be opened by name from an unrelated process (another program, a C or
/// MPI tool). The creator owns the name: dropping it (or calling
/// [`unlink`](SharedMemory::unlink)) removes the name. If the program dies
/// first — even by `kill -9` — the program's resource tracker (a small process
/// started with the first object) removes it and prints one warning line on
/// stderr. Objects are created with mode `0600`
/// under a unique name (`/shmpool-<pid>-<counter>-<random>`).
///
/// ```
/// let mut shm = shmpool::SharedMemory::create(4096)?;
/// shm.as_mut_slice()[0] = 42;
/// let other = shmpool::SharedMemory::open(shm.name())?;   // e.g. in another process
/// assert_eq!(other.as_slice()[0], 42);
/// assert_eq!(other.len(), 4096);
/// drop(other);
/// drop(shm);                                              // the name is removed
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    name: String,
    // Send and Sync through the mapping: `&self` only reads through
    // `as_slice` (other processes may write: that is the point, and callers
    // synchronize through their own protocol), `&mut self` writes.
    map: Mapping,
    owner: bool,
    _fd: OwnedFd,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl SharedMemory {
    /// Creates a new zero-filled object of `len` bytes (at least 1) and maps it.
    pub fn create(len: usize) -> Result<SharedMemory, Error> {
        if len == 0 {
            return Err(Error::invalid(
                "a shared-memory object needs at least one byte",
            ));
        }
        let mut random = [0u8; 8];
        // On failure the name is still unique by pid and counter, and O_EXCL
        // refuses a clash.
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::NONBLOCK);
        let name = format!(
            "/shmpool-{}-{}-{:016x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            u64::from_ne_bytes(random)
        );
        // Registered before it exists: a crash between the two calls must not
        // leave an untracked name.
        tracker::register(Kind::SharedMemory, &name)?;
        match Self::map(&name, Some(len)) {
            Ok(shm) => Ok(shm),
            Err(e) => {
                let _ = tracker::unregister(Kind::SharedMemory, &name);
                Err(e)
            }
        }
    }

    /// Maps an existing object by name; its size is the object's size. The
    /// handle does not own the name: dropping it leaves the object alone.
    pub fn open(name: &str) -> Result<SharedMemory, Error> {
        Self::map(name, None)
    }

    fn map(name: &str, create: Option<usize>) -> Result<SharedMemory, Error> {
        let cname = CString::new(name).map_err(|_| Error::invalid("a name without NUL bytes"))?;
        let flags = match create {
            Some(_) => OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            None => OFlags::RDWR,
        };
        // Mode 0600: only this user may open it (rustix adds O_CLOEXEC).
        let fd = rustix::shm::open(cname.as_c_str(), flags, Mode::from_raw_mode(0o600))
            .map_err(io::Error::from)?;
        let fail = |e: rustix::io::Errno| {
            if create.is_some() {
                let _ = rustix::shm::unlink(cname.as_c_str());
            }
            Error::Io(e.into())
        };
        let len = match create {
            Some(len) => {
                rustix::fs::ftruncate(&fd, len as u64).map_err(fail)?;
                len
            }
            None => {
                let size = rustix::fs::fstat(&fd).map_err(fail)?.st_size;
                if size <= 0 {
                    return Err(Error::invalid(format!("{name} is empty")));
                }
                size as usize
            }
        };
        let map = Mapping::shared(fd.as_fd(), len, false).map_err(fail)?;
        Ok(SharedMemory {
            name: name.to_owned(),
            map,
            owner: create.is_some(),
            _fd: fd,
        })
    }

    /// The object's name, for [`open`](SharedMemory::open) in another process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: an object has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes. Other processes may change them at any time; synchronize
    /// through your own protocol.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, valid until drop.
        unsafe { std::slice::from_raw_parts(self.map.base(), self.map.len()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` mapped bytes, valid until drop; `&mut self` is exclusive
        // in this process.
        unsafe { std::slice::from_raw_parts_mut(self.map.base(), self.map.len()) }
    }

    /// Removes the name now (mappings stay valid until dropped). Only the
    /// creator's handle removes the name on drop; this works from any handle.
    pub fn unlink(&mut self) -> Result<(), Error> {
        rustix::shm::unlink(self.name.as_str()).map_err(io::Error::from)?;
        if self.owner {
            self.owner = false;
        }
        let _ = tracker::unregister(Kind::SharedMemory, &self.name);
        Ok(())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.unlink();
        }
    }
}
