//! Criterion benches for the Core issue: one group per question, comparisons
//! (rayon with 2 threads, a sequential loop) in the same group so ratios come
//! from one run. `cargo bench --bench pool`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use shmpool::{get_context, Pool, StartMethod};
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
    group.finish();
}

/// `x * x` over f64 slices: shmpool's map against rayon's collect and a loop.
fn map_square_f64(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let rayon = rayon_pool();
    let mut group = c.benchmark_group("map_square_f64");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for n in [10_000usize, 1_000_000, 10_000_000] {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("shmpool_map", n), &v, |b, v| {
            b.iter(|| pool.map(|x: f64| x * x, v).unwrap())
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

criterion_group!(
    benches,
    round_trip,
    apply_async_tiny,
    map_square_f64,
    map_chunksize,
    pool_create_destroy,
    imap_items
);
criterion_main!(benches);
