//! Maps over plain slices: workers read and write the caller's memory
//! (zero-copy), or copy through the pool's shared memory when the kernel
//! refuses them or `zero_copy(false)` asks for it. Both paths give the same
//! results; a refusal is found out, never turned into wrong data. Every wait
//! is bounded.

mod common;

use common::bounded;
use shmpool::{get_context, Error, Pool, StartMethod};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// One test at a time: one of them measures this process's resident shared
/// memory, which another test's pool would grow meanwhile.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` bounded, and alone among this file's tests.
fn alone(f: impl FnOnce() + Send + 'static) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    bounded(LIMIT, f);
}

fn sq(x: f64) -> f64 {
    x * x
}
fn widen(x: u8) -> u64 {
    u64::from(x) * 1_000_003
}
fn rotate(v: [u32; 3]) -> [u32; 3] {
    [v[1], v[2], v[0].wrapping_mul(7)]
}
fn mul_add(a: f64, b: f64, c: u16) -> f64 {
    a * b + f64::from(c)
}

fn pool(zero_copy: bool, processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .zero_copy(zero_copy)
        .build()
        .unwrap()
}

/// Lengths around the size where maps switch from copying to zero-copy
/// (2 MiB of input + output), and sizes spanning many stage pieces.
const LENGTHS: [usize; 6] = [0, 1, 7, 1000, 300_001, 1_000_003];

#[test]
fn map_over_plain_slices_matches_a_sequential_loop_on_both_paths() {
    alone(|| {
        for zero_copy in [true, false] {
            let pool = pool(zero_copy, 2);
            for len in LENGTHS {
                let v: Vec<f64> = (0..len).map(|i| i as f64 * 0.25 - 3.0).collect();
                let want: Vec<f64> = v.iter().map(|&x| sq(x)).collect();
                for chunksize in [3usize, 1024, 65_537, len.max(1)] {
                    if len > 10_000 && chunksize < 1000 {
                        continue;
                    }
                    let got = pool.map_chunked(sq, &v, chunksize).unwrap();
                    assert!(
                        got == want,
                        "zero_copy {zero_copy}, len {len}, chunk {chunksize}"
                    );
                }
                assert!(
                    pool.map(sq, &v).unwrap() == want,
                    "len {len}, default chunks"
                );
                // Another element size on each side, and an unaligned start.
                let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let from = len.min(3);
                let wide = pool.map(widen, &bytes[from..]).unwrap();
                assert!(wide
                    .iter()
                    .zip(&bytes[from..])
                    .all(|(&w, &b)| w == widen(b)));
            }
        }
    });
}

#[test]
fn starmap_map_into_and_map_inplace_work_on_plain_slices_on_both_paths() {
    alone(|| {
        for zero_copy in [true, false] {
            let pool = pool(zero_copy, 2);
            for len in LENGTHS {
                let args: Vec<(f64, f64, u16)> = (0..len)
                    .map(|i| (i as f64, 0.5, (i % 65_000) as u16))
                    .collect();
                let want: Vec<f64> = args.iter().map(|&(a, b, c)| mul_add(a, b, c)).collect();
                assert!(
                    pool.starmap(mul_add, &args).unwrap() == want,
                    "starmap, len {len}"
                );

                let triples: Vec<[u32; 3]> = (0..len as u32).map(|i| [i, i ^ 0x5555, !i]).collect();
                let mut out = vec![[0u32; 3]; len];
                pool.map_into(rotate, &triples, &mut out).unwrap();
                assert!(out.iter().zip(&triples).all(|(o, &t)| *o == rotate(t)));

                // In place, on a sub-slice: the elements outside stay as they were.
                let mut data = triples.clone();
                let (lo, hi) = (len / 3, len - len / 5);
                pool.map_inplace_chunked(rotate, &mut data[lo..hi], 4096)
                    .unwrap();
                for (i, (d, &t)) in data.iter().zip(&triples).enumerate() {
                    let want = if (lo..hi).contains(&i) { rotate(t) } else { t };
                    assert_eq!(*d, want, "zero_copy {zero_copy}, len {len}, index {i}");
                }
            }
            let mut short = vec![[0u32; 3]; 2];
            assert!(matches!(
                pool.map_into(rotate, &[[1, 2, 3]], &mut short),
                Err(Error::InvalidArgument(_))
            ));
        }
    });
}

#[test]
fn every_start_method_maps_the_callers_memory() {
    alone(|| {
        let v: Vec<f64> = (0..1_000_000).map(f64::from).collect();
        let want: Vec<f64> = v.iter().map(|&x| sq(x)).collect();
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(2).unwrap();
            assert!(pool.map(sq, &v).unwrap() == want, "{method}");
            let mut data = v.clone();
            pool.map_inplace(sq, &mut data).unwrap();
            assert!(data == want, "{method}");
        }
    });
}

/// Resident shared memory of this process, in KiB.
fn shared_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// The copying path must touch about the data's size in shared memory (that
// is what makes the measure meaningful); the zero-copy path almost none.
#[test]
fn a_zero_copy_map_keeps_no_second_copy_in_shared_memory() {
    alone(|| {
        let v: Vec<f64> = (0..4_000_000).map(f64::from).collect(); // 32 MB in, 32 MB out
        for zero_copy in [true, false] {
            let pool = pool(zero_copy, 2);
            pool.map(sq, &v[..1000]).unwrap(); // every worker has started
            let before = shared_kib();
            let out = pool.map(sq, &v).unwrap();
            let mut data = v.clone();
            pool.map_inplace(sq, &mut data).unwrap();
            let grown = shared_kib().saturating_sub(before);
            assert!(out == data);
            if pool.zero_copy() {
                assert!(zero_copy);
                assert!(
                    grown < 4 << 10,
                    "zero-copy maps touched {grown} KiB of shared memory"
                );
            } else {
                assert!(grown > 30 << 10, "copying maps touched only {grown} KiB");
                if zero_copy {
                    eprintln!("note: this kernel refuses zero-copy; only the copying path ran");
                }
            }
        }
    });
}

/// Makes `process_vm_readv` and `process_vm_writev` fail with `EPERM` in the
/// calling process from now on, as Yama scope 2 or a container's seccomp
/// profile would.
fn refuse_process_vm() {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf: 0,
        k,
    };
    let filter = [
        stmt(LD_W_ABS, 0), // the syscall number
        jump(libc::SYS_process_vm_readv as u32, 2),
        jump(libc::SYS_process_vm_writev as u32, 1),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: installs a seccomp filter on this (worker) thread; `program`
    // points at a valid filter that outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog
            ),
            0
        );
    }
}

#[test]
fn a_pool_whose_workers_are_refused_finds_out_at_start_and_copies() {
    alone(|| {
        for method in StartMethod::ALL {
            let pool = get_context(method)
                .pool_builder()
                .processes(2)
                .initializer(refuse_process_vm, ())
                .build()
                .unwrap();
            // With an initializer, build waits for every worker's report,
            // which comes after its probe.
            assert!(!pool.zero_copy(), "{method}");
            let v: Vec<f64> = (0..1_000_000).map(f64::from).collect();
            let out = pool.map(sq, &v).unwrap();
            assert!(out.iter().zip(&v).all(|(&o, &x)| o == sq(x)), "{method}");
        }
    });
}

fn plus_one(x: u64) -> u64 {
    x + 1
}

// A worker refused in the middle of a pool's life (here: a seccomp filter a
// task installs) makes its chunks come back refused before they touch
// anything; the pool redoes them by copying, and copies from then on. In
// place, each element must still be mapped exactly once.
#[test]
fn a_worker_refused_mid_map_never_gives_wrong_data() {
    alone(|| {
        let v: Vec<u64> = (0..2_000_000).collect();
        for processes in [1, 2] {
            for in_place in [false, true] {
                let pool = pool(true, processes);
                pool.map(plus_one, &v[..1000]).unwrap();
                if !pool.zero_copy() {
                    eprintln!("note: this kernel refuses zero-copy; nothing to test");
                    return;
                }
                // Refuses one worker (with two, the other keeps its access).
                pool.apply(refuse_process_vm, ()).unwrap();
                if in_place {
                    let mut data = v.clone();
                    pool.map_inplace_chunked(plus_one, &mut data, 10_000)
                        .unwrap();
                    assert!(
                        data.iter().zip(&v).all(|(&d, &x)| d == x + 1),
                        "{processes} workers: an element mapped twice or not at all"
                    );
                } else {
                    let out = pool.map_chunked(plus_one, &v, 10_000).unwrap();
                    assert!(out.iter().zip(&v).all(|(&o, &x)| o == x + 1));
                }
                assert!(!pool.zero_copy(), "a refusal turns zero-copy off");
                let again = pool.map(plus_one, &v).unwrap();
                assert_eq!(again[1_999_999], 2_000_000);
            }
        }
    });
}

/// Set by the parent before the pool forks, so every worker sees it.
static ABORTED_ONCE: std::sync::OnceLock<shmpool::Event> = std::sync::OnceLock::new();

/// Doubles, but the first worker to reach 500 000 dies there, in the middle
/// of its chunk (whose first part it has already written back in place).
fn double_or_die_once(x: f64) -> f64 {
    let once = ABORTED_ONCE.get().unwrap();
    if x == 500_000.0 && !once.is_set().unwrap() {
        once.set().unwrap();
        std::process::abort();
    }
    2.0 * x
}

// As for a `SharedVec`: an in-place chunk whose worker died is never run
// again, even with retries, since it may have overwritten part of its input.
#[test]
fn an_in_place_chunk_of_a_plain_slice_whose_worker_died_is_not_run_again() {
    alone(|| {
        ABORTED_ONCE.set(shmpool::Event::new().unwrap()).unwrap();
        for zero_copy in [true, false] {
            ABORTED_ONCE.get().unwrap().clear().unwrap();
            let pool = Pool::builder()
                .processes(2)
                .retries(3)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            let v: Vec<f64> = (0..1_000_000).map(f64::from).collect();
            let mut data = v.clone();
            match pool.map_inplace_chunked(double_or_die_once, &mut data, 1_000_000) {
                Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
                other => panic!("zero_copy {zero_copy}: {other:?}"),
            }
            // Never mapped twice: each element is either doubled or untouched.
            assert!(data.iter().zip(&v).all(|(&d, &x)| d == x || d == 2.0 * x));
            assert!(data[500_000..]
                .iter()
                .zip(&v[500_000..])
                .all(|(&d, &x)| d == x));
        }
    });
}
