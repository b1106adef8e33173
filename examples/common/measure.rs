//! What the measuring examples (`compare`, `compare_shared_alloc`,
//! `small_tasks`) share: the limits they judge shmpool against, measured in
//! the same run, and how they read a process's memory and run themselves
//! again in a fresh process.
#![allow(dead_code)] // each example uses a part

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Seconds per round trip between this process and a forked child through a
/// word of a shared page, both spinning, or both sleeping in `futex_wait`.
pub fn ping_pong(trips: u32, sleeping: bool) -> f64 {
    // SAFETY: a fresh shared anonymous page; it aliases no Rust object.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    // SAFETY: the page is zeroed, aligned, and outlives both processes' use.
    let word = unsafe { &*page.cast::<AtomicU32>() };
    let futex = |op: i32, val: u32| {
        // SAFETY: a futex call on a word of a shared mapping.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word as *const AtomicU32,
                op,
                val,
                0usize,
                0usize,
                0u32,
            )
        };
    };
    // Waits until `word` holds `want`, spinning or sleeping.
    let wait = |want: u32| loop {
        let now = word.load(Ordering::Acquire);
        if now == want {
            break;
        }
        if sleeping {
            futex(libc::FUTEX_WAIT, now);
        } else {
            std::hint::spin_loop();
        }
    };
    let set = |v: u32| {
        word.store(v, Ordering::Release);
        if sleeping {
            futex(libc::FUTEX_WAKE, 1);
        }
    };
    // SAFETY: the child only touches the shared word and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for i in 0..trips {
            wait(2 * i + 1);
            set(2 * i + 2);
        }
        // SAFETY: leaves the child without running the parent's code.
        unsafe { libc::_exit(0) };
    }
    let start = Instant::now();
    for i in 0..trips {
        set(2 * i + 1);
        wait(2 * i + 2);
    }
    let seconds = start.elapsed().as_secs_f64() / f64::from(trips);
    // SAFETY: waits for our own child; unmaps the page mapped above, which
    // no reference outlives.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::munmap(page, 4096);
    }
    seconds
}

/// Forks two children that exit at once and waits for both: what a pool of
/// two fork workers cannot start and stop faster than. Returns the seconds.
pub fn two_forks() -> f64 {
    let start = Instant::now();
    let mut pids = [0; 2];
    for pid in &mut pids {
        // SAFETY: the child leaves with _exit, running nothing of ours.
        *pid = unsafe { libc::fork() };
        if *pid == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
    for pid in pids {
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    start.elapsed().as_secs_f64()
}

/// A `kB` field of a `/proc` status-like file, in KiB (0 if absent).
pub fn status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes a process holds that no other process maps.
pub fn private_bytes(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    (status_kib(&path, "Private_Clean:") + status_kib(&path, "Private_Dirty:")) * 1024
}

/// Runs this program again with `args` (a mode that measures in a fresh
/// process and prints its figures) and returns the figures it printed.
pub fn run_self(args: &[&str]) -> Vec<f64> {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(&exe)
        .args(args)
        .output()
        .expect("run this program again");
    assert!(
        out.status.success(),
        "{exe:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().expect("a figure"))
        .collect()
}
