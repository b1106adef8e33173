//! `SharedAlloc` as this program's global allocator: large blocks live in a
//! shared heap the workers reach, so maps move nothing, while fork keeps a
//! child's writes to inherited objects its own. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{get_context, Pool, SharedAlloc, StartMethod};
use std::alloc::{alloc, dealloc, Layout};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

#[global_allocator]
static ALLOC: SharedAlloc = SharedAlloc::new();

const LIMIT: Duration = Duration::from_secs(120);
const MB: usize = 1 << 20;

/// The tests take turns: the heap's figures are the whole process's.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn sq(x: f64) -> f64 {
    x * x
}

fn add(a: f64, b: f64) -> f64 {
    a + b
}

/// Writes `value` over the `len` f64 at `addr` (an object the worker
/// inherited) and returns what the worker then reads back at index 7.
fn overwrite(addr: usize, len: usize, value: f64) -> f64 {
    // SAFETY: `addr` is a live Vec<f64> of `len` elements in the parent,
    // inherited by this forked worker; the test reads it back only after.
    let v = unsafe { std::slice::from_raw_parts_mut(addr as *mut f64, len) };
    v.fill(value);
    v[7]
}

/// Whether this worker maps the heap of process `owner` shared (the view it
/// makes to read and write map chunks there).
fn maps_heap_of(owner: u32) -> bool {
    let name = format!("/memfd:shmpool-heap-{owner} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(&name) && l.split_whitespace().nth(1) == Some("rw-s"))
}

/// [`overwrite`] with 9.0, panicking (a non-zero exit) if the write did not
/// show in the child.
fn overwrite_or_fail(addr: usize, len: usize) {
    assert_eq!(overwrite(addr, len, 9.0), 9.0);
}

fn squares(n: usize) -> Vec<f64> {
    (0..n).map(|i| (i as f64) * (i as f64)).collect()
}

#[test]
fn a_map_over_a_shared_vec_is_right_and_its_result_is_written_in_the_heap() {
    let _turn = turn();
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for n in [SharedAlloc::THRESHOLD / 8, 1_000_003, 3_000_000] {
            let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
            assert!(SharedAlloc::contains(v.as_ptr().cast()));
            let out = pool.map(sq, &v).unwrap();
            assert!(SharedAlloc::contains(out.as_ptr().cast()));
            assert_eq!(out, squares(n), "n = {n}");
        }
    });
}

#[test]
fn map_into_and_map_inplace_work_on_shared_vecs() {
    let _turn = turn();
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let n = 500_000;
        let mut v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut out = vec![0.0; n];
        pool.map_into(sq, &v, &mut out).unwrap();
        assert_eq!(out, squares(n));
        pool.map_inplace(sq, &mut v).unwrap();
        assert_eq!(v, squares(n));
    });
}

#[test]
fn a_worker_writing_an_inherited_big_vec_leaves_the_parents_copy_alone() {
    let _turn = turn();
    bounded(LIMIT, || {
        // Made before the workers are forked: they inherit it.
        let v: Vec<f64> = vec![1.5; 2 * MB / 8];
        assert!(SharedAlloc::contains(v.as_ptr().cast()));
        let pool = Pool::builder()
            .processes(1)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        let seen = pool
            .apply(overwrite, (v.as_ptr() as usize, v.len(), -3.0))
            .unwrap();
        assert_eq!(seen, -3.0, "the worker wrote its copy");
        assert!(v.iter().all(|&x| x == 1.5), "the parent's copy changed");
        // The pool still maps the same vector right after that.
        assert_eq!(pool.map(sq, &v).unwrap(), vec![2.25; v.len()]);
    });
}

#[test]
fn a_forked_process_writing_an_inherited_big_vec_leaves_the_parents_copy_alone() {
    let _turn = turn();
    bounded(LIMIT, || {
        let v: Vec<f64> = vec![4.0; MB / 8];
        let mut p = get_context(StartMethod::Fork)
            .process(overwrite_or_fail, (v.as_ptr() as usize, v.len()));
        p.start().unwrap();
        assert_eq!(p.join(Some(Duration::from_secs(60))).unwrap(), Some(0));
        assert!(v.iter().all(|&x| x == 4.0), "the parent's copy changed");
    });
}

/// The bytes the heap's memfd holds, read from outside the allocator: the
/// file's allocated blocks, through `/proc/self/fd`.
fn memfd_bytes() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let name = format!("/memfd:shmpool-heap-{} (deleted)", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == name.as_str()))
        .map(|e| std::fs::metadata(e.path()).unwrap().blocks() * 512)
        .expect("the heap's memfd")
}

#[test]
fn memory_freed_in_the_heap_goes_back_to_the_system() {
    let _turn = turn();
    bounded(LIMIT, || {
        SharedAlloc::trim();
        let before = SharedAlloc::stats().resident_bytes;
        let big = SharedAlloc::DEFAULT_RETAIN + 64 * MB;
        let v = vec![1u8; big];
        assert!(SharedAlloc::contains(v.as_ptr()));
        let held = SharedAlloc::stats().resident_bytes;
        assert!(held >= before + big, "{held} < {before} + {big}");
        let held_outside = memfd_bytes();
        assert!(held_outside >= big as u64, "{held_outside}");
        drop(v);
        let after = SharedAlloc::stats().resident_bytes;
        assert!(after <= before + MB, "{after} > {before}: not returned");
        let after_outside = memfd_bytes();
        assert!(
            after_outside + big as u64 <= held_outside + MB as u64,
            "{after_outside}: the memfd kept the pages"
        );

        // A block within the budget is kept for reuse, until a trim.
        let w = vec![1u8; 32 * MB];
        drop(w);
        let s = SharedAlloc::stats();
        assert!(s.retained_bytes >= 32 * MB);
        assert!(s.resident_bytes >= before + 32 * MB);
        SharedAlloc::trim();
        let s = SharedAlloc::stats();
        assert_eq!(s.retained_bytes, 0);
        assert!(s.resident_bytes <= before + MB, "trim kept pages");
    });
}

#[test]
fn small_allocations_stay_out_of_the_shared_heap() {
    let _turn = turn();
    let small = vec![0u8; SharedAlloc::THRESHOLD - 1];
    assert!(!SharedAlloc::contains(small.as_ptr()));
    let b = Box::new([0u64; 8]);
    assert!(!SharedAlloc::contains((&*b as *const [u64; 8]).cast()));
    let s = String::from("small");
    assert!(!SharedAlloc::contains(s.as_ptr()));
    let large = vec![0u8; SharedAlloc::THRESHOLD];
    assert!(SharedAlloc::contains(large.as_ptr()));
    assert!(large.iter().all(|&b| b == 0));
}

#[test]
fn realloc_across_the_threshold_keeps_the_contents() {
    let _turn = turn();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(4 * MB / 8) as u64 {
        v.push(i * 3);
    }
    assert!(SharedAlloc::contains(v.as_ptr().cast()));
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    // Shrinking in the heap, then below the threshold: out of it.
    v.truncate(MB / 8);
    v.shrink_to_fit();
    assert!(SharedAlloc::contains(v.as_ptr().cast()));
    v.truncate(1000);
    v.shrink_to_fit();
    assert!(!SharedAlloc::contains(v.as_ptr().cast()));
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    // And back up again.
    v.resize(2 * MB / 8, 7);
    assert!(SharedAlloc::contains(v.as_ptr().cast()));
    assert!(v[..1000]
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u64 * 3));
    assert!(v[1000..].iter().all(|&x| x == 7));
}

#[test]
fn alignments_up_to_a_page_and_beyond_are_honoured() {
    let _turn = turn();
    for align in [8, 64, 4096, 8192, 2 * MB] {
        let layout = Layout::from_size_align(MB + 17, align).unwrap();
        // SAFETY: a non-zero size; freed below with the same layout.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "align {align}");
        assert!(SharedAlloc::contains(p));
        // SAFETY: `p` holds `layout.size()` bytes.
        unsafe {
            p.write_bytes(0xAB, layout.size());
            assert_eq!(*p.add(layout.size() - 1), 0xAB);
            dealloc(p, layout);
        }
    }
}

#[test]
fn zeroed_blocks_read_as_zero_even_when_reused() {
    let _turn = turn();
    for _ in 0..3 {
        let mut v = vec![0u32; MB];
        assert!(v.iter().all(|&x| x == 0));
        v.fill(u32::MAX);
        drop(v);
    }
}

#[test]
fn every_start_method_maps_over_the_shared_heap() {
    let _turn = turn();
    bounded(LIMIT, || {
        let n = 1_000_000;
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        for method in StartMethod::ALL {
            let pool = Pool::builder()
                .processes(1)
                .start_method(method)
                .zero_copy(false)
                .build()
                .unwrap();
            let out = pool.map(sq, &v).unwrap();
            assert_eq!(out, squares(n), "{method:?}");
            assert!(
                pool.apply(maps_heap_of, (std::process::id(),)).unwrap(),
                "{method:?}: the worker did not map the parent's heap"
            );
        }
    });
}

#[test]
fn workers_map_the_heap_for_starmap_and_after_new_blocks() {
    let _turn = turn();
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .zero_copy(false)
            .build()
            .unwrap();
        for n in [600_000, 2_000_000] {
            // Blocks made after the workers started, at new offsets.
            let pairs: Vec<(f64, f64)> = (0..n).map(|i| (i as f64, 2.0)).collect();
            let sums = pool.starmap(add, &pairs).unwrap();
            assert!(SharedAlloc::contains(sums.as_ptr().cast()));
            assert!(sums.iter().enumerate().all(|(i, &x)| x == i as f64 + 2.0));
        }
        assert!(pool.apply(maps_heap_of, (std::process::id(),)).unwrap());
    });
}

fn big_in_worker(n: u64) -> u64 {
    let v: Vec<u64> = (0..n).collect();
    v.iter().sum()
}

/// The address of a large block a worker allocates.
fn large_block_address() -> usize {
    let v = vec![1u8; 4 * MB];
    std::hint::black_box(v.as_ptr() as usize)
}

#[test]
fn workers_allocate_large_blocks_of_their_own() {
    let _turn = turn();
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let n = 1_000_000u64;
        let sums = pool.map(big_in_worker, &[n; 4]).unwrap();
        assert_eq!(sums, vec![n * (n - 1) / 2; 4]);
    });
}

#[test]
fn a_fork_child_allocates_nothing_in_the_heap_it_inherited() {
    let _turn = turn();
    bounded(LIMIT, || {
        // The heap exists before the fork, so the worker inherits it.
        let parents = vec![0u8; 2 * MB];
        assert!(SharedAlloc::contains(parents.as_ptr()));
        let pool = Pool::builder()
            .processes(1)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        for _ in 0..3 {
            let addr = pool.apply(large_block_address, ()).unwrap();
            assert!(
                !SharedAlloc::contains(addr as *const u8),
                "the worker allocated in its parent's heap"
            );
        }
    });
}

#[test]
fn workers_under_an_address_space_cap_map_the_heap_or_copy() {
    let _turn = turn();
    bounded(LIMIT, || {
        let v: Vec<f64> = (0..700_000).map(|i| i as f64).collect();
        for method in StartMethod::ALL {
            let pool = Pool::builder()
                .processes(1)
                .start_method(method)
                .memory_limit_per_worker(256 << 20)
                .build()
                .unwrap();
            for _ in 0..2 {
                assert_eq!(pool.map(sq, &v).unwrap(), squares(v.len()), "{method:?}");
            }
            // Forked after the heap was made, a worker maps its view before
            // the cap; a re-executed one cannot map it under the cap: its
            // first chunk is refused and redone, and the pool copies.
            let mapped = pool.apply(maps_heap_of, (std::process::id(),)).unwrap();
            assert_eq!(mapped, method == StartMethod::Fork, "{method:?}");
        }
        // Another pool of the same process still maps the heap.
        let pool = Pool::builder()
            .processes(1)
            .start_method(StartMethod::Spawn)
            .build()
            .unwrap();
        assert_eq!(pool.map(sq, &v).unwrap(), squares(v.len()));
        assert!(pool.apply(maps_heap_of, (std::process::id(),)).unwrap());
    });
}
