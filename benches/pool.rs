//! Criterion benches for the Core issue: one group per question, comparisons
//! (rayon with 2 threads, a sequential loop) in the same group so ratios come
//! from one run. `cargo bench --bench pool`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use shmpool::{get_context, Pool, SharedVec, StartMethod};
use std::time::Duration;

const PROCESSES: usize = 2;

fn square_u64(x: u64) -> u64 {
    x * x
}

fn rayon_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .unwrap()
}

/// `apply` round trip: submit one tiny task and wait for its result.
fn round_trip(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    let mut x = 0u64;
    group.bench_function("shmpool_apply", |b| {
        b.iter(|| {
            x += 1;
            pool.apply(square_u64, (black_box(x),)).unwrap()
        })
    });
    group.finish();
}

/// Tiny tasks: submit N with `apply_async`, then collect all N.
fn apply_async_tiny(c: &mut Criterion) {
    const N: u64 = 10_000;
    let pool = Pool::new(PROCESSES).unwrap();
    let mut group = c.benchmark_group("apply_async_tiny");
    group.throughput(Throughput::Elements(N));
    group.bench_function("shmpool_10k", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N)
                .map(|i| pool.apply_async(square_u64, (i,)).unwrap())
                .collect();
            handles.iter().map(|h| h.get(None).unwrap()).sum::<u64>()
        })
    });
    // The same with a callback on each result (run on the callback thread).
    let sum = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    group.bench_function("shmpool_10k_with_callbacks", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N)
                .map(|i| {
                    let sum = std::sync::Arc::clone(&sum);
                    let add = move |v| {
                        sum.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
                    };
                    pool.apply_async_with(square_u64, (i,), add, |e| panic!("{e}"))
                        .unwrap()
                })
                .collect();
            handles.iter().all(|h| h.wait(None))
        })
    });
    group.finish();
}

/// `x * x` over f64 slices: shmpool's map against rayon's collect and a loop.
fn map_square_f64(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let copying = Pool::builder()
        .processes(PROCESSES)
        .zero_copy(false)
        .build()
        .unwrap();
    let rayon = rayon_pool();
    let mut group = c.benchmark_group("map_square_f64");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for n in [1_000usize, 10_000, 1_000_000, 10_000_000, 100_000_000] {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("shmpool_map", n), &v, |b, v| {
            b.iter(|| pool.map(|x: f64| x * x, v).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("shmpool_map_copying", n), &v, |b, v| {
            b.iter(|| copying.map(|x: f64| x * x, v).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("rayon_collect", n), &v, |b, v| {
            b.iter(|| rayon.install(|| v.par_iter().map(|&x| x * x).collect::<Vec<f64>>()))
        });
        group.bench_with_input(BenchmarkId::new("sequential", n), &v, |b, v| {
            b.iter(|| v.iter().map(|&x| x * x).collect::<Vec<f64>>())
        });
    }
    group.finish();
}

/// `x * x` over 10M f64 in shared memory, in place and into a second vector,
/// against rayon's `par_iter_mut` / `par_iter().zip()` on ordinary vectors.
fn map_zero_copy(c: &mut Criterion) {
    const N: usize = 10_000_000;
    let pool = Pool::new(PROCESSES).unwrap();
    let rayon = rayon_pool();
    let v: Vec<f64> = (0..N).map(|i| (i % 1000) as f64).collect();
    let mut group = c.benchmark_group("map_zero_copy_10M_f64");
    group
        .sample_size(20)
        .throughput(Throughput::Elements(N as u64));
    let mut shared = SharedVec::from_slice(&pool, &v).unwrap();
    let mut out = SharedVec::<f64>::zeroed(&pool, N).unwrap();
    // Repeated squaring reaches inf after a few rounds; multiplying inf costs
    // the same as any other value on x86-64 (no denormals on this path).
    group.bench_function("shmpool_map_inplace", |b| {
        b.iter(|| pool.map_inplace(|x: f64| x * x, &mut shared).unwrap())
    });
    group.bench_function("shmpool_map_into", |b| {
        b.iter(|| pool.map_into(|x: f64| x * x, &shared, &mut out).unwrap())
    });
    let mut plain = v.clone();
    group.bench_function("rayon_par_iter_mut", |b| {
        b.iter(|| rayon.install(|| plain.par_iter_mut().for_each(|x| *x = *x * *x)))
    });
    let mut plain_out = vec![0.0f64; N];
    group.bench_function("rayon_zip_into", |b| {
        b.iter(|| {
            rayon.install(|| {
                plain_out
                    .par_iter_mut()
                    .zip(plain.par_iter())
                    .for_each(|(o, &x)| *o = x * x)
            })
        })
    });
    group.bench_function("sequential_in_place", |b| {
        b.iter(|| plain.iter_mut().for_each(|x| *x = *x * *x))
    });
    group.finish();
}

/// About 1 µs and about 100 µs of arithmetic per element.
fn costly(x: u64, rounds: u64) -> u64 {
    let mut h = x;
    for _ in 0..rounds {
        h = black_box(
            h.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    h
}
fn one_us(x: u64) -> u64 {
    costly(x, 1_000)
}
fn hundred_us(x: u64) -> u64 {
    costly(x, 100_000)
}

/// Functions that cost real time per element: here the pool should match rayon.
fn map_costly(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let rayon = rayon_pool();
    let mut group = c.benchmark_group("map_costly");
    group.sample_size(10);
    for (name, f, n) in [
        ("1us", one_us as fn(u64) -> u64, 1_000_000u64),
        ("100us", hundred_us as fn(u64) -> u64, 10_000),
    ] {
        let v: Vec<u64> = (0..n).collect();
        group.throughput(Throughput::Elements(n));
        match name {
            "1us" => group.bench_function(format!("shmpool_map_{name}"), |b| {
                b.iter(|| pool.map(one_us, &v).unwrap())
            }),
            _ => group.bench_function(format!("shmpool_map_{name}"), |b| {
                b.iter(|| pool.map(hundred_us, &v).unwrap())
            }),
        };
        group.bench_function(format!("rayon_collect_{name}"), |b| {
            b.iter(|| rayon.install(|| v.par_iter().map(|&x| f(x)).collect::<Vec<u64>>()))
        });
    }
    group.finish();
}

/// How chunk size trades scheduling overhead against balance: 1M u64.
fn map_chunksize(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let v: Vec<u64> = (0..1_000_000).collect();
    let mut group = c.benchmark_group("map_chunksize");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(v.len() as u64));
    for chunksize in [100usize, 1_000, 10_000, 125_000] {
        group.bench_with_input(
            BenchmarkId::from_parameter(chunksize),
            &chunksize,
            |b, &cs| b.iter(|| pool.map_chunked(square_u64, &v, cs).unwrap()),
        );
    }
    group.finish();
}

/// Creating a 2-process pool and dropping it, with each start method.
fn pool_create_destroy(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_create_destroy");
    group.sample_size(20);
    for method in StartMethod::ALL {
        group.bench_function(format!("shmpool_2_processes_{method}"), |b| {
            b.iter(|| drop(get_context(method).pool(PROCESSES).unwrap()))
        });
    }
    group.finish();
}

/// `imap_unordered` / `imap` item rate over a lazy range, chunk size 1 and 64.
fn imap_items(c: &mut Criterion) {
    const N: u64 = 100_000;
    let pool = Pool::new(PROCESSES).unwrap();
    let mut group = c.benchmark_group("imap_items");
    group.sample_size(10).throughput(Throughput::Elements(N));
    for chunksize in [1usize, 64] {
        group.bench_function(format!("imap_unordered_chunk_{chunksize}"), |b| {
            b.iter(|| {
                pool.imap_unordered_chunked(square_u64, 0..N, chunksize)
                    .unwrap()
                    .map(Result::unwrap)
                    .sum::<u64>()
            })
        });
        group.bench_function(format!("imap_chunk_{chunksize}"), |b| {
            b.iter(|| {
                pool.imap_chunked(square_u64, 0..N, chunksize)
                    .unwrap()
                    .map(Result::unwrap)
                    .sum::<u64>()
            })
        });
    }
    group.finish();
}

/// What `Pool::stats` adds to each task in the worker (`worker::finish`):
/// two reads of the time-stamp counter and three relaxed load-and-store
/// updates of the worker's own counters, done here the same way; and, for
/// comparison, the same with two CLOCK_MONOTONIC reads (the vDSO).
fn stats_counting(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    #[repr(C, align(64))]
    #[derive(Default)]
    struct Counters {
        tasks_done: AtomicU64,
        busy: AtomicU64,
        slowest: AtomicU64,
    }
    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    fn tsc() -> u64 {
        // SAFETY: RDTSC exists on every x86_64 CPU.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    let counters = Counters::default();
    let mut group = c.benchmark_group("stats_counting");
    group.throughput(Throughput::Elements(1));
    for (name, clock) in [("per_task", tsc as fn() -> u64), ("per_task_vdso", now_ns)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let began = clock();
                black_box(&counters);
                let took = clock().saturating_sub(began);
                let add = |w: &AtomicU64, v: u64| w.store(w.load(Relaxed).wrapping_add(v), Relaxed);
                add(&counters.tasks_done, 1);
                add(&counters.busy, took);
                if took > counters.slowest.load(Relaxed) {
                    counters.slowest.store(took, Relaxed);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    round_trip,
    stats_counting,
    apply_async_tiny,
    map_square_f64,
    map_chunksize,
    pool_create_destroy,
    imap_items,
    map_zero_copy,
    map_costly
);
criterion_main!(benches);
