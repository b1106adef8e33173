//! A stopped worker (SIGSTOP): the supervisor notices it and says so on
//! stderr, `Pool::stopped_workers` lists it, a map waits for it until it is
//! continued, and `task_timeout` kills it. Its own test binary: it redirects
//! the process's stderr to read what the supervisor says. Every wait is
//! bounded.

mod common;

use common::bounded;
use shmpool::{Error, Pool};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// This process's stderr, redirected into a pipe until dropped.
struct Stderr {
    read: i32,
    saved: i32,
    seen: String,
}

impl Stderr {
    fn capture() -> Stderr {
        let mut fds = [0; 2];
        // SAFETY: plain syscalls on descriptors this test owns.
        unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK), 0);
            let saved = libc::dup(2);
            libc::dup2(fds[1], 2);
            libc::close(fds[1]);
            Stderr {
                read: fds[0],
                saved,
                seen: String::new(),
            }
        }
    }

    /// Waits up to `limit` for `needle` in what was written.
    fn shows(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a live buffer from our non-blocking pipe.
            let n = unsafe { libc::read(self.read, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.seen
                    .push_str(&String::from_utf8_lossy(&buf[..n as usize]));
                continue;
            }
            if self.seen.contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stderr {
    fn drop(&mut self) {
        // SAFETY: puts the saved descriptor back; closes ours.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
            libc::close(self.read);
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a worker of a pool this test owns.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn a_stopped_worker_is_noticed_and_a_map_waits_for_it_or_its_task_timeout() {
    bounded(LIMIT, || {
        let mut stderr = Stderr::capture();

        let pool = Pool::new(1).unwrap();
        let pid = pool.worker_pids()[0];
        let job = pool.map_async_chunked(nap, &[300u64; 4], 1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        signal(pid, libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.stopped_workers() != [pid] && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.stopped_workers(), [pid]);
        let notice = format!("worker 1 (pid {pid}) is stopped");
        assert!(
            stderr.shows(&notice, Duration::from_secs(10)),
            "said: {:?}",
            stderr.seen
        );
        // The map waits for it (as Python's would)...
        assert!(matches!(
            job.get(Some(Duration::from_millis(500))),
            Err(Error::Timeout)
        ));
        // ... until it is continued.
        signal(pid, libc::SIGCONT);
        assert_eq!(
            job.get(Some(Duration::from_secs(30))).unwrap(),
            vec![300; 4]
        );
        assert!(pool.stopped_workers().is_empty());
        assert_eq!(
            stderr.seen.matches(&notice).count(),
            1,
            "said once per stop"
        );
        drop(pool);

        let pool = Pool::builder()
            .processes(1)
            .task_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let pid = pool.worker_pids()[0];
        let job = pool.apply_async(nap, (1000,)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        signal(pid, libc::SIGSTOP);
        let got = job.get(Some(Duration::from_secs(30)));
        assert!(matches!(got, Err(Error::TaskTimedOut { .. })), "{got:?}");
        let timed_out = format!("worker 1 (pid {pid}) was stopped when its task reached");
        assert!(
            stderr.shows(&timed_out, Duration::from_secs(5)),
            "said: {:?}",
            stderr.seen
        );
        assert_eq!(pool.apply(nap, (1,)).unwrap(), 1, "the pool goes on");
    });
}
