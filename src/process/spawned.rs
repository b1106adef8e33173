//! [`Process`]: run one function in a new process.

// Unsafe code: adopts an inherited descriptor; runs an entry point.
#![allow(unsafe_code)]

use super::launch::on_launcher;
use crate::error::Error;
use crate::objects::Heap;
use crate::start::fork::{self, Child};
use crate::start::StartMethod;
use crate::task::{init_entry, ApplyInput, EntryPoint, Task, TaskIo};
use crate::Pod;
use std::mem::{align_of, size_of, MaybeUninit};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a started process runs, written into the object heap by the parent so
/// that a spawned child (another copy of the program) can read it too.
#[repr(C)]
#[derive(Clone, Copy)]
struct ProcessSpec {
    entry: u64,
    args_at: u64,
    name_len: u64,
    name: [u8; 64],
}

// SAFETY: integers and bytes (any bytes are a valid value; the child checks
// `name_len` and `args_at` before use), written once through a fresh
// allocation before the child starts, and never again.
unsafe impl crate::shm::region::Shared for ProcessSpec {}

/// A function running in a process of its own, like Python's
/// `multiprocessing.Process(target=f, args=(...))`.
///
/// The function and its arguments follow the pool's rules: a function item or
/// non-capturing closure, [`Pod`] arguments — which include the shared objects
/// ([`Queue`](crate::Queue), [`Lock`](crate::Lock), [`Value`](crate::Value), …),
/// so a child can talk to its parent. The exit code is 0 when the function
/// returns, 1 when it panics (the panic message goes to stderr, as Python
/// prints a traceback), `-N` when signal `N` killed it.
///
/// The child is killed if this program exits (it never outlives it, as a
/// Python "daemon" process). Dropping a started `Process` without `join` lets
/// the child run on; it is reaped when it exits.
///
/// ```
/// use shmpool::Process;
///
/// fn greet(n: u32) { assert_eq!(n, 7) }
/// fn fail() { panic!("no") }
///
/// let mut p = Process::new(greet, (7,));
/// p.start()?;
/// assert_eq!(p.join(None)?, Some(0));
/// let mut q = Process::new(fail, ());
/// q.start()?;
/// assert_eq!(q.join(None)?, Some(1));
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Process {
    name: String,
    method: StartMethod,
    entry: EntryPoint,
    entry_fn: crate::task::Entry,
    /// The argument tuple's bytes (aligned to 64 by the element type).
    args: Vec<Aligned>,
    args_len: usize,
    args_align: usize,
    /// Why the function cannot travel (a `fn` pointer outside the
    /// executable): reported by `start`.
    refused: Option<Error>,
    child: Option<Child>,
    exitcode: Option<i32>,
}

/// 64 bytes of a task's input, padding included (so possibly
/// uninitialized), aligned for any argument tuple the pool accepts.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Aligned([MaybeUninit<u8>; 64]);

static COUNTER: AtomicU64 = AtomicU64::new(1);

impl Process {
    /// A process that will run `f(args...)`, started with the program's start
    /// method ([`set_start_method`](crate::set_start_method); fork by
    /// default). Nothing runs until [`start`](Process::start).
    pub fn new<F, Args>(f: F, args: Args) -> Process
    where
        F: Task<Args>,
        Args: Pod,
    {
        crate::task::travels!(F);
        Self::with_method(crate::start::default_method(), f, args)
    }

    pub(crate) fn with_method<F, Args>(method: StartMethod, f: F, args: Args) -> Process
    where
        F: Task<Args>,
        Args: Pod,
    {
        type Input<F, Args> = ApplyInput<F, Args>;
        const { assert!(align_of::<Input<F, Args>>() <= 64) };
        let size = size_of::<Input<F, Args>>();
        let mut buf = vec![Aligned([MaybeUninit::new(0); 64]); size.div_ceil(64).max(1)];
        let refused = match f.bind() {
            Ok(bound) => {
                let input: Input<F, Args> = (bound, args);
                let bytes = buf.iter_mut().flat_map(|line| &mut line.0);
                for (to, &from) in bytes.zip(crate::pod::bytes_of(&input)) {
                    *to = from;
                }
                None
            }
            Err(e) => Some(e),
        };
        Process {
            name: format!("Process-{}", COUNTER.fetch_add(1, Ordering::Relaxed)),
            method,
            entry: EntryPoint::new(init_entry::<F, Args>),
            entry_fn: init_entry::<F, Args>,
            args: buf,
            args_len: size,
            args_align: align_of::<Input<F, Args>>(),
            refused,
            child: None,
            exitcode: None,
        }
    }

    /// The process's name: `"Process-N"` unless set with
    /// [`set_name`](Process::set_name). Its child sees it as
    /// [`current_process().name`](crate::current_process).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the process (before it starts; up to 64 bytes are kept).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Starts the child. A process starts once: a second call is
    /// [`Error::InvalidState`].
    pub fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() || self.exitcode.is_some() {
            return Err(Error::state("a process can only be started once"));
        }
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        // A spawned child whose start-up hook did not run takes its role here.
        crate::start::bootstrap::take_role();
        crate::start::check_entry(self.method, self.entry_fn)?;
        crate::panic::install_quiet_panic_hook();
        let heap = Heap::get()?;
        let mut args = heap.alloc_fresh(self.args_len.max(1), self.args_align)?;
        let arg_bytes = self.args.iter().flat_map(|line| line.0).take(self.args_len);
        args.write_bytes(0, &arg_bytes.collect::<Vec<_>>());
        let args_at = args.into_offset();
        let mut name = [0u8; 64];
        let n = truncate(&self.name, 64);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        let mut spec = heap.alloc_fresh(size_of::<ProcessSpec>(), 64)?;
        spec.write(
            0,
            ProcessSpec {
                entry: self.entry.0,
                args_at,
                name_len: n as u64,
                name,
            },
        );
        let spec_at = spec.into_offset();
        let method = self.method;
        let child = on_launcher(move || launch(method, spec_at))?;
        heap.register(child.pid as u32);
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the child to end, at most `timeout`; returns its exit code,
    /// or `None` if it still runs. Before `start`: [`Error::InvalidState`]
    /// (Python: "can only join a started process").
    pub fn join(&mut self, timeout: Option<Duration>) -> Result<Option<i32>, Error> {
        if let Some(code) = self.exitcode {
            return Ok(Some(code));
        }
        if self.child.is_none() {
            return Err(Error::state("can only join a started process"));
        }
        let deadline = crate::deadline::deadline_opt(timeout);
        loop {
            if let Some(code) = self.poll_exit() {
                return Ok(Some(code));
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    // Rounded up, so the wait never ends just short of `d`.
                    Some(left) => {
                        rustix::event::Timespec::try_from(left + Duration::from_millis(1)).ok()
                    }
                    None => return Ok(None),
                },
            };
            let Some(child) = &self.child else {
                continue; // reaped by poll_exit: the next turn returns
            };
            // The pidfd turns readable when the child exits; an interruption
            // or error just means another turn.
            let mut pfd = [rustix::event::PollFd::new(
                &child.pidfd,
                rustix::event::PollFlags::IN,
            )];
            let _ = rustix::event::poll(&mut pfd, timeout.as_ref());
        }
    }

    /// Reaps the child if it has exited; its exit code then.
    fn poll_exit(&mut self) -> Option<i32> {
        if self.exitcode.is_none() {
            let status = self.child.as_ref()?.reap(false)?;
            self.child = None;
            self.exitcode = Some(exit_code(status));
        }
        self.exitcode
    }

    /// The exit code once the child has ended (`None` while it runs or before
    /// `start`): 0, 1 for a panic, the argument of `exit(n)`, or `-N` for
    /// signal `N`.
    pub fn exitcode(&mut self) -> Option<i32> {
        self.poll_exit()
    }

    /// Whether the child has started and not ended.
    pub fn is_alive(&mut self) -> bool {
        self.child.is_some() && self.poll_exit().is_none()
    }

    /// The child's process id, once started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid as u32)
    }

    /// Asks the child to stop (SIGTERM); [`join`](Process::join) to wait.
    pub fn terminate(&mut self) {
        if self.poll_exit().is_none() {
            if let Some(c) = &self.child {
                // Our unreaped child: the pid names it alone.
                if let Some(pid) = rustix::process::Pid::from_raw(c.pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
    }

    /// Kills the child (SIGKILL); [`join`](Process::join) to wait.
    pub fn kill(&mut self) {
        if self.poll_exit().is_none() {
            if let Some(c) = &self.child {
                c.kill();
            }
        }
    }

    /// How the child is (or will be) started.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            if let Some(child) = self.child.take() {
                // Let it run on; reap it when it ends, so it leaves no zombie.
                let _ = std::thread::Builder::new()
                    .name("shmpool-reaper".into())
                    .spawn(move || {
                        child.reap(true);
                    });
            }
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("pid", &self.pid())
            .field("exitcode", &self.exitcode)
            .finish()
    }
}

fn truncate(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Python's convention: the exit status, or `-N` for signal `N`.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// The process module's start-up hook, run before `main` in every process of
/// the program: takes the role of a spawned `Process` if the environment
/// names it.
#[used]
#[link_section = ".init_array"]
static PROCESS_HOOK: extern "C" fn() = process_hook;

extern "C" fn process_hook() {
    // Unwinding out of an `extern "C"` function aborts; keep panics inside.
    let _ = std::panic::catch_unwind(|| {
        let env = crate::start::spawn::PROCESS_ENV;
        if let Some(claimed) = crate::start::bootstrap::claim_role_fds::<1>(env) {
            crate::start::bootstrap::exit(run_spawned(&claimed.value, claimed.fds));
        }
    });
}

/// A spawned `Process`: adopts the program's object heap (`heap_fd`, named
/// by the value's first field), then runs its spec.
fn run_spawned(value: &std::ffi::OsStr, heap_fd: Option<[OwnedFd; 1]>) -> i32 {
    let parts: Vec<u64> = value
        .to_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    let [_, spec_at, probe] = parts[..] else {
        return crate::start::BAD_SEGMENT_EXIT;
    };
    if probe != crate::start::probe_offset() {
        return crate::start::BINARY_MISMATCH_EXIT;
    }
    let Some([heap_fd]) = heap_fd else {
        return crate::start::BAD_SEGMENT_EXIT;
    };
    if !Heap::adopt(heap_fd) {
        return crate::start::BAD_SEGMENT_EXIT;
    }
    fork::die_with_parent(std::os::unix::process::parent_id());
    crate::panic::install_quiet_panic_hook();
    run_spec(spec_at)
}

/// Starts the child for the spec at `spec_at` (on the launcher thread).
fn launch(method: StartMethod, spec_at: u64) -> Result<Child, Error> {
    // Keeps the hook in the executable (see `start::bootstrap::ensure_linked`).
    std::hint::black_box(&PROCESS_HOOK);
    let heap = Heap::get()?;
    let heap_fd = heap.fd();
    match method {
        StartMethod::Fork => Ok(fork::fork_child(move || run_spec(spec_at))?),
        StartMethod::Spawn => {
            crate::start::bootstrap::ensure_linked();
            let value = format!(
                "{},{},{}",
                heap_fd.as_raw_fd(),
                spec_at,
                crate::start::probe_offset()
            );
            let env = crate::start::spawn::environment((crate::start::spawn::PROCESS_ENV, value))?;
            Ok(crate::start::spawn::exec_self(
                &env,
                &[heap_fd],
                crate::start::spawn::Tie::Thread,
            )?)
        }
        StartMethod::ForkServer => Ok(crate::start::forkserver::start_process(
            heap_fd, spec_at, run_spec,
        )?),
    }
}

/// In the child: runs the spec at `spec_at` of this process's heap; returns
/// the exit code (0, or 1 if the function panicked).
fn run_spec(spec_at: u64) -> i32 {
    let Some(heap) = Heap::existing() else {
        return crate::start::BAD_SEGMENT_EXIT;
    };
    // The parent wrote it before starting us, and never writes it again.
    let Some(&spec) = heap.at::<ProcessSpec>(spec_at) else {
        return crate::start::BAD_SEGMENT_EXIT;
    };
    let name = String::from_utf8_lossy(&spec.name[..(spec.name_len as usize).min(64)]).into_owned();
    super::enter_process(name);
    let Some(args) = heap.ptr(spec.args_at, 0) else {
        return crate::start::BAD_SEGMENT_EXIT;
    };
    let io = TaskIo::local(args, std::ptr::null_mut(), 1);
    let entry = EntryPoint(spec.entry);
    // SAFETY: the entry was made by `EntryPoint::new` in this binary (same
    // program: fork, or checked by the spawn probe), and `args` holds its
    // argument tuple, written by the parent with it.
    match std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { entry.call(io) })) {
        // A process entry touches no caller memory, so it cannot be refused.
        Ok(_) => 0,
        Err(_) => 1, // the panic hook has printed the message
    }
}
