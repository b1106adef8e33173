//! [`SharedMemory`]: a named block of shared memory in `/dev/shm`, like Python's
//! `multiprocessing.shared_memory.SharedMemory`.

use crate::error::Error;
use crate::tracker::{self, Kind};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
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
    base: NonNull<u8>,
    len: usize,
    owner: bool,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain memory valid until drop; `&self` only reads
// through `as_slice` (other processes may write: that is the point, and
// callers synchronize through their own protocol), `&mut self` writes.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

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
        // SAFETY: fills our buffer; on failure the name is still unique by pid
        // and counter, and O_EXCL refuses a clash.
        unsafe { libc::getrandom(random.as_mut_ptr().cast(), 8, libc::GRND_NONBLOCK) };
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
            Some(_) => libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            None => libc::O_RDWR | libc::O_CLOEXEC,
        };
        // SAFETY: a valid C string; mode 0600: only this user may open it.
        let raw = unsafe { libc::shm_open(cname.as_ptr(), flags, 0o600) };
        if raw < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fail = |e: io::Error| {
            if create.is_some() {
                // SAFETY: a valid C string naming the object we just created.
                unsafe { libc::shm_unlink(cname.as_ptr()) };
            }
            Error::Io(e)
        };
        let len = match create {
            Some(len) => {
                // SAFETY: plain syscall on our descriptor.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
                    return Err(fail(io::Error::last_os_error()));
                }
                len
            }
            None => {
                // SAFETY: an all-zero stat is valid; fstat fills it.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: plain syscall writing into `st`.
                if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
                    return Err(fail(io::Error::last_os_error()));
                }
                if st.st_size <= 0 {
                    return Err(Error::invalid(format!("{name} is empty")));
                }
                st.st_size as usize
            }
        };
        // SAFETY: a new mapping chosen by the kernel; it aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(fail(io::Error::last_os_error()));
        }
        Ok(SharedMemory {
            name: name.to_owned(),
            base: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
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
        self.len
    }

    /// Always `false`: an object has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes. Other processes may change them at any time; synchronize
    /// through your own protocol.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, valid until drop.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` mapped bytes, valid until drop; `&mut self` is exclusive
        // in this process.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }

    /// Removes the name now (mappings stay valid until dropped). Only the
    /// creator's handle removes the name on drop; this works from any handle.
    pub fn unlink(&mut self) -> Result<(), Error> {
        let cname = CString::new(self.name.as_str()).expect("checked at creation");
        // SAFETY: a valid C string.
        if unsafe { libc::shm_unlink(cname.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        if self.owner {
            self.owner = false;
        }
        let _ = tracker::unregister(Kind::SharedMemory, &self.name);
        Ok(())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: our mapping of `len` bytes; no reference into it outlives
        // `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if self.owner {
            let _ = self.unlink();
        }
    }
}
