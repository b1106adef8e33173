//! `kill -9` of a parent that holds a busy pool, or Ctrl-C (`SIGINT` to its
//! whole process group, which workers ignore) in a parent that does not
//! handle it: within 2 s no worker (nor fork server) remains, and the named
//! shared memory it created is removed by the resource tracker, which says
//! so on stderr.
//!
//! This test binary makes itself a child subreaper, so the orphans of the
//! killed parent become its children: it can see them exit and reap them,
//! whatever the container's init does with orphans.

mod common;

use common::bounded;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// Reaps any exited child; returns the pids reaped.
fn reap_any() -> Vec<i32> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        reaped.push(pid);
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; we reap our own below, so "exists" is
    // "not yet reaped".
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// How the test ends the parent.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// `kill -9` of the parent alone.
    Kill,
    /// `SIGINT` to the parent's process group, as Ctrl-C in a terminal
    /// sends it to the foreground group: the parent dies of it, its workers
    /// (which ignore it) die with the parent.
    Interrupt,
}

fn kill_parent_and_check(method: &str, death: Death) {
    let mut parent = Command::new(common::example("crash_parent"))
        .arg(method)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 4, "helper said {line:?}");
    let workers: Vec<i32> = words[..2].iter().map(|w| w.parse().unwrap()).collect();
    let worker_parent: i32 = words[2].parse().unwrap();
    let shm_path = format!("/dev/shm{}", words[3]);
    let mode = std::fs::metadata(&shm_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{shm_path}");
    let mut doomed = workers.clone();
    if method == "forkserver" {
        assert_ne!(
            worker_parent,
            parent.id() as i32,
            "workers are the server's"
        );
        doomed.push(worker_parent);
    } else {
        assert_eq!(worker_parent, parent.id() as i32);
    }

    match death {
        Death::Kill => parent.kill().unwrap(), // SIGKILL
        Death::Interrupt => {
            // SAFETY: plain syscall; the group is the parent's own (process_group(0)).
            assert_eq!(
                unsafe { libc::kill(-(parent.id() as i32), libc::SIGINT) },
                0
            );
        }
    }
    let status = parent.wait().unwrap();
    if let Death::Interrupt = death {
        assert_eq!(status.signal(), Some(libc::SIGINT), "{method}: {status}");
    }
    let killed = Instant::now();
    while doomed.iter().any(|&p| alive(p)) || std::path::Path::new(&shm_path).exists() {
        reap_any();
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "{method}, {death:?}: after 2 s, alive: {:?}, shm left: {}",
            doomed.iter().filter(|&&p| alive(p)).collect::<Vec<_>>(),
            std::path::Path::new(&shm_path).exists()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The tracker's warning names the object it removed. Its stderr is the
    // helper's, which reaches end-of-file once the tracker has exited too.
    let mut stderr = String::new();
    parent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("shm {}; removed it", words[3])),
        "{method}: stderr was {stderr:?}"
    );
    reap_any();
}

/// One test for both deaths: each reaps whatever child has exited
/// (`waitpid(-1)`), which would steal the other's parent.
#[test]
fn killing_or_interrupting_a_parent_leaves_no_worker_no_zombie_and_no_shared_memory() {
    // SAFETY: plain syscall on this process's own attributes.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    bounded(LIMIT, || {
        for death in [Death::Kill, Death::Interrupt] {
            for method in ["fork", "forkserver", "spawn"] {
                kill_parent_and_check(method, death);
            }
        }
    });
    // Everything the helpers started was reaped by us: no zombie is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !common::children().is_empty() {
        reap_any();
        assert!(Instant::now() < deadline, "left: {:?}", common::children());
        std::thread::sleep(Duration::from_millis(5));
    }
}
