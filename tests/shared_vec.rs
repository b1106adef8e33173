//! `SharedVec`, `map_inplace` and `map_into` over data in the pool's shared
//! memory. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{get_context, Error, Pool, SharedVec, StartMethod};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn sq(x: f64) -> f64 {
    x * x
}
fn half(x: u64) -> f32 {
    x as f32 / 2.0
}
fn boom_on_7(x: u32) -> u32 {
    assert!(x != 7, "seven");
    x
}

#[test]
fn map_inplace_matches_a_sequential_loop_for_every_size_and_chunk() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for len in [0usize, 1, 7, 1000, 1_000_003] {
            let v: Vec<f64> = (0..len).map(|i| i as f64 * 0.5).collect();
            let want: Vec<f64> = v.iter().map(|&x| sq(x)).collect();
            for chunksize in [1usize, 3, 1024, len.max(1)] {
                if len > 10_000 && chunksize < 1000 {
                    continue; // a million one-element tasks prove nothing more
                }
                let mut data = SharedVec::from_slice(&pool, &v).unwrap();
                pool.map_inplace_chunked(sq, &mut data, chunksize).unwrap();
                assert!(data[..] == want[..], "len {len}, chunk {chunksize}");
            }
            let mut data = SharedVec::from_slice(&pool, &v).unwrap();
            pool.map_inplace(sq, &mut data).unwrap();
            assert!(data[..] == want[..], "len {len}, default chunks");
        }
    });
}

#[test]
fn map_into_writes_another_type_and_checks_lengths() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let input = SharedVec::from_slice(&pool, &(0..100_000u64).collect::<Vec<_>>()).unwrap();
        let mut out = SharedVec::<f32>::zeroed(&pool, input.len()).unwrap();
        assert!(out.iter().all(|&x| x == 0.0));
        pool.map_into(half, &input, &mut out).unwrap();
        assert!(out.iter().enumerate().all(|(i, &x)| x == i as f32 / 2.0));
        pool.map_into_chunked(half, &input, &mut out, 7).unwrap();
        assert_eq!(out[99_999], 49_999.5);
        let mut short = SharedVec::<f32>::zeroed(&pool, 3).unwrap();
        assert!(matches!(
            pool.map_into(half, &input, &mut short),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            pool.map_into_chunked(half, &input, &mut out, 0),
            Err(Error::InvalidArgument(_))
        ));
    });
}

// Another pool's segment is mapped in this process too: to that pool's
// workers it is the caller's memory like any other.
#[test]
fn a_vector_of_another_pool_is_mapped_like_any_slice() {
    bounded(LIMIT, || {
        let a = Pool::new(1).unwrap();
        for zero_copy in [true, false] {
            let b = Pool::builder()
                .processes(1)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            let mut v = SharedVec::from_slice(&a, &[3.0f64]).unwrap();
            b.map_inplace(sq, &mut v).unwrap();
            assert_eq!(v[0], 9.0, "zero_copy {zero_copy}");
            a.map_inplace(sq, &mut v).unwrap();
            assert_eq!(v[0], 81.0, "zero_copy {zero_copy}");
        }
    });
}

#[test]
fn a_failed_chunk_is_reported_and_the_vector_stays_usable() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let mut v = SharedVec::from_slice(&pool, &(0..100u32).collect::<Vec<_>>()).unwrap();
        match pool.map_inplace_chunked(boom_on_7, &mut v, 10) {
            Err(Error::TaskPanicked { message }) => assert_eq!(message, "seven"),
            other => panic!("{other:?}"),
        }
        v[7] = 0;
        pool.map_inplace_chunked(boom_on_7, &mut v, 10).unwrap();
        assert_eq!(v[8], 8);
    });
}

/// Set by the parent before the pool forks, so every worker sees it.
static ABORTED_ONCE: std::sync::OnceLock<shmpool::Event> = std::sync::OnceLock::new();

/// Doubles, but the first worker to reach 500 dies there, halfway through
/// its chunk (whose first half it has already doubled in place).
fn double_or_die_once(x: f64) -> f64 {
    let once = ABORTED_ONCE.get().unwrap();
    if x == 500.0 && !once.is_set().unwrap() {
        once.set().unwrap();
        std::process::abort();
    }
    2.0 * x
}

// A retry of an in-place chunk would read elements its first run already
// wrote: with retries, such a chunk still fails with WorkerDied, never gives
// elements mapped twice.
#[test]
fn an_in_place_chunk_whose_worker_died_is_not_run_again() {
    bounded(LIMIT, || {
        ABORTED_ONCE.set(shmpool::Event::new().unwrap()).unwrap();
        let pool = Pool::builder().processes(2).retries(3).build().unwrap();
        let mut v =
            SharedVec::from_slice(&pool, &(0..1000).map(f64::from).collect::<Vec<_>>()).unwrap();
        match pool.map_inplace_chunked(double_or_die_once, &mut v, 1000) {
            Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGABRT)),
            other => panic!("{other:?}"),
        }
        assert!(v[..500]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == 2.0 * i as f64));
        assert!(v[500..]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (500 + i) as f64));
    });
}

#[test]
fn shared_vectors_work_with_every_start_method_and_outlive_the_pool_handle() {
    bounded(LIMIT, || {
        for method in StartMethod::ALL {
            let pool = get_context(method).pool(2).unwrap();
            let mut v = SharedVec::from_slice(&pool, &[1.0, 2.0, 3.0]).unwrap();
            pool.map_inplace(sq, &mut v).unwrap();
            assert_eq!(&v[..], &[1.0, 4.0, 9.0], "{method}");
            drop(pool);
            v[0] = 5.0; // still mapped in the parent
            assert_eq!(format!("{v:?}"), "[5.0, 4.0, 9.0]");
        }
    });
}

#[test]
fn freed_vectors_give_their_memory_back() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        // 100 × 64 MiB, each zeroed (touched): 6.4 GiB of resident shared
        // memory if freed blocks were not reused, 64 MiB if they are.
        for i in 0..100u64 {
            let mut v = SharedVec::<u64>::zeroed(&pool, 8 << 20).unwrap();
            v[0] = i;
            assert_eq!(v[(8 << 20) - 1], 0);
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let shmem_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("RssShmem:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(
            shmem_kib < 1 << 20,
            "{shmem_kib} KiB of shared memory resident"
        );
    });
}

#[test]
fn a_vector_larger_than_the_shared_arena_is_capacity_exceeded() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        // 72 GiB: more than the arena reserves; refused before any page is touched.
        match SharedVec::<u64>::zeroed(&pool, 9 << 30) {
            Err(Error::CapacityExceeded(why)) => assert!(why.contains("arena"), "{why}"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        assert_eq!(SharedVec::<u64>::zeroed(&pool, 3).unwrap().len(), 3);
    });
}
