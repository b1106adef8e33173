//! Tasks as Rust users write them: bound values (`partial`), `fn` pointers,
//! and per-call options (`Pool::call`), through every kind of call and every
//! start method. Every wait is bounded.

mod common;

use common::bounded;
use shmpool::{get_context, partial, Error, Pool, Process, StartMethod};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn scale(k: f64, x: f64) -> f64 {
    x * k
}
fn offset(by: u64, x: u64) -> u64 {
    x + by
}
fn affine((a, b): (i64, i64), x: i64) -> i64 {
    a * x + b
}
fn add3(a: u64, b: u64, c: u64) -> u64 {
    a * 100 + b * 10 + c
}
fn square(x: u64) -> u64 {
    x * x
}
fn cube(x: u64) -> u64 {
    x * x * x
}
fn negate(x: u64) -> u64 {
    x.wrapping_neg()
}
fn sum_table(table: [u32; 40], i: u64) -> u64 {
    u64::from(table[i as usize % 40]) + i
}

/// A value known only at run time, as a user's would be.
fn runtime_value<T: std::str::FromStr>(fallback: T) -> T {
    std::env::var("SHMPOOL_TEST_NEVER_SET")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(fallback)
}

#[test]
fn a_bound_value_reaches_every_kind_of_call() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let k: u64 = runtime_value(7);
        let task = partial(offset, k);
        let v: Vec<u64> = (0..10_000).collect();
        let want: Vec<u64> = v.iter().map(|x| x + k).collect();

        assert_eq!(pool.map(task, &v).unwrap(), want);
        assert_eq!(pool.map_chunked(task, &v, 7).unwrap(), want);
        assert_eq!(pool.map_async(task, &v).unwrap().get(WAIT).unwrap(), want);
        assert_eq!(
            pool.map_async_chunked(task, &v, 3)
                .unwrap()
                .get(WAIT)
                .unwrap(),
            want
        );
        let ordered: Vec<u64> = pool
            .imap(task, v.iter().copied())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ordered, want);
        let mut any: Vec<u64> = pool
            .imap_unordered_chunked(task, v.iter().copied(), 64)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        any.sort_unstable();
        assert_eq!(any, want);
        let mut out = vec![0u64; v.len()];
        pool.map_into(task, &v, &mut out).unwrap();
        assert_eq!(out, want);
        let mut data = v.clone();
        pool.map_inplace(task, &mut data).unwrap();
        assert_eq!(data, want);
        assert_eq!(pool.apply(task, (5,)).unwrap(), 5 + k);
        assert_eq!(
            pool.apply_async(task, (6,)).unwrap().get(WAIT).unwrap(),
            6 + k
        );

        let pairs: Vec<(u64, u64)> = (0..100).map(|i| (i % 10, i / 10)).collect();
        let star = partial(add3, 9);
        assert_eq!(
            pool.starmap(star, &pairs).unwrap(),
            pairs
                .iter()
                .map(|&(b, c)| add3(9, b, c))
                .collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_bound_value_travels_with_large_maps_through_both_paths() {
    bounded(LIMIT, || {
        let k: f64 = runtime_value(1.5);
        // 10^6 f64s in and out: beyond the small-map threshold, so the
        // workers reach the caller's memory (or the arena without zero-copy).
        let v: Vec<f64> = (0..1_000_000).map(f64::from).collect();
        for zero_copy in [true, false] {
            let pool = Pool::builder()
                .processes(2)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            let out = pool.map(partial(scale, k), &v).unwrap();
            assert!(out.iter().zip(&v).all(|(o, x)| *o == x * k));
        }
    });
}

#[test]
fn tuples_arrays_and_nested_partials_bind_like_functools_partial() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let (a, b): (i64, i64) = (runtime_value(3), runtime_value(-4));
        assert_eq!(
            pool.map(partial(affine, (a, b)), &[0, 1, 2]).unwrap(),
            [b, a + b, 2 * a + b]
        );
        // Two values bound one after the other: add3(1, 2, x).
        let twice = partial(partial(add3, 1), 2);
        assert_eq!(pool.map(twice, &[3, 4]).unwrap(), [123, 124]);
        // A table of 160 bytes bound to every chunk.
        let mut table = [0u32; 40];
        for (i, t) in table.iter_mut().enumerate() {
            *t = runtime_value(i as u32 * 1000);
        }
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(
            pool.map_chunked(partial(sum_table, table), &v, 10).unwrap(),
            v.iter().map(|&i| sum_table(table, i)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_bound_value_too_large_for_a_chunk_is_refused_before_anything_runs() {
    bounded(LIMIT, || {
        fn big(table: [u64; 64], i: u64) -> u64 {
            table[i as usize % 64]
        }
        let pool = Pool::new(1).unwrap();
        let err = pool.map(partial(big, [1u64; 64]), &[1, 2]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(why) if why.contains("at most 192")),
            "{err:?}"
        );
        // `apply` carries its arguments in a block of their own: no limit.
        assert_eq!(pool.apply(partial(big, [5u64; 64]), (3,)).unwrap(), 5);
    });
}

#[test]
fn bound_values_of_192_bytes_pass_in_every_map_form_and_193_do_not() {
    bounded(LIMIT, || {
        fn pick(table: [f64; 24], i: u64) -> f64 {
            table[i as usize % 24]
        }
        fn pick2(table: [f64; 24], i: u64, j: u64) -> f64 {
            table[(i + j) as usize % 24]
        }
        fn add(a: f64, b: f64) -> f64 {
            a + b
        }
        fn add_fixed(fixed: [u8; 185], a: f64, b: f64) -> f64 {
            a + b + f64::from(fixed[0])
        }
        let table: [f64; 24] = std::array::from_fn(|i| i as f64 * runtime_value(1.0));
        let v: Vec<u64> = (0..100).collect();
        let expected: Vec<f64> = v.iter().map(|&i| pick(table, i)).collect();
        let pool = Pool::new(2).unwrap();
        // 192 bytes: the user's value fills a chunk's room exactly; a
        // function item takes none of it.
        assert_eq!(pool.map(partial(pick, table), &v).unwrap(), expected);
        assert_eq!(
            pool.map_async(partial(pick, table), &v)
                .unwrap()
                .get(WAIT)
                .unwrap(),
            expected
        );
        let pairs: Vec<(u64, u64)> = v.iter().map(|&i| (i, 1)).collect();
        assert_eq!(
            pool.starmap(partial(pick2, table), &pairs).unwrap(),
            v.iter().map(|&i| pick(table, i + 1)).collect::<Vec<_>>()
        );
        let lazy: Vec<f64> = pool
            .imap(partial(pick, table), v.clone())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(lazy, expected);
        assert_eq!(
            pool.map_reduce(partial(pick, table), add, &v).unwrap(),
            Some(expected.iter().sum())
        );
        // Both functions' bound values count in a `map_reduce`: 192 + 1 is
        // one too many.
        let err = pool
            .map_reduce(partial(pick, table), partial(add_fixed, [0u8; 185]), &v)
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(why) if why.contains("take 377 bytes")),
            "{err:?}"
        );
        // A `fn` pointer's code offset takes 8 bytes of the room.
        let as_pointer: fn([f64; 24], u64) -> f64 = pick;
        let err = pool.map(partial(as_pointer, table), &v).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(why)
                if why.contains("take 200 bytes") && why.contains("shmpool::Array")),
            "{err:?}"
        );
        let small: [f64; 23] = std::array::from_fn(|i| table[i]);
        fn pick23(table: [f64; 23], i: u64) -> f64 {
            table[i as usize % 23]
        }
        let as_pointer: fn([f64; 23], u64) -> f64 = pick23;
        assert_eq!(
            pool.map(partial(as_pointer, small), &[5]).unwrap(),
            [table[5]]
        );
    });
}

#[test]
fn a_table_of_fn_pointers_runs_like_function_items() {
    bounded(LIMIT, || {
        type Bench = (&'static str, fn(u64) -> u64);
        let table: [Bench; 3] = [("square", square), ("cube", cube), ("negate", negate)];
        let pool = Pool::new(2).unwrap();
        let v: Vec<u64> = (0..5000).collect();
        for (name, f) in table {
            assert_eq!(pool.apply(f, (3,)).unwrap(), f(3), "{name}");
            let want: Vec<u64> = v.iter().map(|&x| f(x)).collect();
            assert_eq!(pool.map(f, &v).unwrap(), want, "{name}");
            assert_eq!(pool.map_chunked(f, &v, 1).unwrap(), want, "{name}");
            let lazy: Vec<u64> = pool
                .imap(f, v.iter().copied())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(lazy, want, "{name}");
        }
        // A pointer with a bound value: offset(10, x).
        let g: fn(u64, u64) -> u64 = offset;
        assert_eq!(pool.map(partial(g, 10), &[1, 2]).unwrap(), [11, 12]);
    });
}

#[test]
fn fn_pointers_and_bound_values_work_with_every_start_method() {
    bounded(LIMIT, || {
        for method in [
            StartMethod::Fork,
            StartMethod::Spawn,
            StartMethod::ForkServer,
        ] {
            let pool = get_context(method).pool(2).unwrap();
            let f: fn(u64) -> u64 = cube;
            let k: u64 = runtime_value(1000);
            let v: Vec<u64> = (0..1000).collect();
            assert_eq!(
                pool.map(f, &v).unwrap(),
                v.iter().map(|&x| cube(x)).collect::<Vec<_>>(),
                "{method:?}"
            );
            assert_eq!(
                pool.map(partial(offset, k), &v).unwrap(),
                v.iter().map(|&x| x + k).collect::<Vec<_>>(),
                "{method:?}"
            );
            assert_eq!(pool.apply(partial(offset, k), (1,)).unwrap(), k + 1);
        }
    });
}

#[test]
fn a_fn_pointer_outside_the_executable_is_refused_not_called() {
    bounded(LIMIT, || {
        // libc's code lies in a shared library. The pointer is never
        // called: the pool refuses it before anything is submitted.
        let foreign = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        // SAFETY: only the address is used; the pool must refuse to call it.
        let f: fn(u64) -> u64 = unsafe { std::mem::transmute::<usize, fn(u64) -> u64>(foreign) };
        let pool = Pool::new(1).unwrap();
        for method_pool in [pool, get_context(StartMethod::Spawn).pool(1).unwrap()] {
            for err in [
                method_pool.apply(f, (1,)).unwrap_err(),
                method_pool.map(f, &[1, 2]).unwrap_err(),
                method_pool
                    .map(partial(offset, 1), &[1])
                    .map(|_| ())
                    .map_or_else(|e| e, |_| Error::InvalidArgument("executable code".into())),
            ] {
                assert!(
                    matches!(&err, Error::InvalidArgument(why) if why.contains("executable")),
                    "{err:?}"
                );
            }
            // The pool is unharmed.
            assert_eq!(method_pool.apply(square, (4,)).unwrap(), 16);
        }
    });
}

#[test]
fn a_closure_capturing_a_reference_is_refused_at_run_time_with_what_to_write() {
    bounded(LIMIT, || {
        // Pointer-sized with a niche, as a `fn` pointer is: only its type
        // tells them apart, at run time. Its bytes would be a pointer into
        // this process, garbage in a worker.
        static K: u64 = 3;
        let k: &'static u64 = &K;
        let pool = Pool::new(1).unwrap();
        let err = pool.map(move |x: u64| x + *k, &[1]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(why) if why.contains("shmpool::partial")),
            "{err:?}"
        );
    });
}

#[test]
fn an_initializer_and_a_process_take_bound_values() {
    bounded(LIMIT, || {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEED: AtomicU64 = AtomicU64::new(0);
        fn set_seed(base: u64, extra: u64) {
            SEED.store(base + extra, Ordering::Relaxed);
        }
        fn read_seed() -> u64 {
            SEED.load(Ordering::Relaxed)
        }
        let base: u64 = runtime_value(40);
        let pool = Pool::builder()
            .processes(2)
            .initializer(partial(set_seed, base), (2,))
            .build()
            .unwrap();
        assert_eq!(pool.apply(read_seed, ()).unwrap(), 42);

        fn exit_with(code: u64, plus: u64) {
            std::process::exit((code + plus) as i32)
        }
        let mut p = Process::new(partial(exit_with, 3), (4,));
        p.start().unwrap();
        assert_eq!(p.join(Some(Duration::from_secs(30))).unwrap(), Some(7));
    });
}

#[test]
fn every_python_call_shape_is_writable_with_call_options() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let pairs: Vec<(i64, i64)> = (0..50).map(|i| (i, 2 * i)).collect();
        fn add(a: i64, b: i64) -> i64 {
            a + b
        }
        let want: Vec<i64> = pairs.iter().map(|&(a, b)| a + b).collect();
        // starmap_async(..., chunksize)
        let r = pool.call().chunksize(4).starmap_async(add, &pairs).unwrap();
        assert_eq!(r.get(WAIT).unwrap(), want);
        // map_async(..., chunksize, callback, error_callback)
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        pool.call()
            .chunksize(3)
            .callbacks(
                move |v: Vec<u64>| tx.send(Ok(v)).unwrap(),
                move |e| tx2.send(Err(e)).unwrap(),
            )
            .map_async(partial(offset, 1), &[1, 2, 3])
            .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap(),
            [2, 3, 4]
        );
        // The error callback, with a chunk size.
        fn boom(_: u64) -> u64 {
            panic!("boom")
        }
        let (tx, rx) = mpsc::channel();
        pool.call()
            .chunksize(1)
            .callbacks(|_: Vec<u64>| {}, move |e| tx.send(e).unwrap())
            .map_async(boom, &[1])
            .unwrap();
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            Error::TaskPanicked { .. }
        ));
        // A chunk size of zero is refused whatever the call.
        assert!(matches!(
            pool.call().chunksize(0).map(square, &[1]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            pool.call().chunksize(0).starmap_async(add, &pairs),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            pool.call().chunksize(0).imap(square, 0..3u64),
            Err(Error::InvalidArgument(_))
        ));
    });
}

fn add_u64(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}
/// `x` as the affine map `y -> (2x + 1) y + x²`: maps of this family do
/// not commute.
fn affine_of(x: u64) -> (u64, u64) {
    (x.wrapping_mul(2).wrapping_add(1), x.wrapping_mul(x))
}
/// Composes two affine maps, first `f` then `g`: associative but not
/// commutative, so chunks combined out of order (or an element folded twice
/// or skipped) change the result.
fn then((fa, fb): (u64, u64), (ga, gb): (u64, u64)) -> (u64, u64) {
    (fa.wrapping_mul(ga), ga.wrapping_mul(fb).wrapping_add(gb))
}

#[test]
fn map_reduce_folds_in_index_order_whatever_the_chunks_and_the_path() {
    bounded(LIMIT, || {
        // 10^6 u64 in: large enough to go where the data lies.
        let v: Vec<u64> = (0..1_000_000).collect();
        let want_sum: u64 = v.iter().map(|&x| square(x)).fold(0, add_u64);
        for zero_copy in [true, false] {
            let pool = Pool::builder()
                .processes(2)
                .zero_copy(zero_copy)
                .build()
                .unwrap();
            assert_eq!(
                pool.map_reduce(square, add_u64, &v).unwrap(),
                Some(want_sum)
            );
            for chunksize in [1usize, 7, 1000, 1_000_000] {
                let small = &v[..3000];
                assert_eq!(
                    pool.call()
                        .chunksize(chunksize)
                        .map_reduce(affine_of, then, small)
                        .unwrap(),
                    small.iter().map(|&x| affine_of(x)).reduce(then),
                    "chunksize {chunksize}, zero_copy {zero_copy}"
                );
            }
            assert_eq!(pool.map_reduce(square, add_u64, &[]).unwrap(), None);
            assert_eq!(pool.map_reduce(square, add_u64, &[9]).unwrap(), Some(81));
        }
    });
}

#[test]
fn map_reduce_takes_partials_fn_pointers_and_shared_vecs() {
    bounded(LIMIT, || {
        fn weighted(w: u64, x: u64) -> u64 {
            w * x
        }
        fn capped_add(cap: u64, a: u64, b: u64) -> u64 {
            (a + b).min(cap)
        }
        let pool = Pool::new(2).unwrap();
        let v: Vec<u64> = (1..=100).collect();
        let w: u64 = runtime_value(3);
        assert_eq!(
            pool.map_reduce(partial(weighted, w), add_u64, &v).unwrap(),
            Some(3 * 5050)
        );
        assert_eq!(
            pool.map_reduce(square, partial(capped_add, 1000), &v)
                .unwrap(),
            Some(1000)
        );
        let op: fn(u64, u64) -> u64 = add_u64;
        let f: fn(u64) -> u64 = cube;
        assert_eq!(
            pool.map_reduce(f, op, &v).unwrap(),
            Some(v.iter().map(|&x| cube(x)).sum())
        );
        let shared = shmpool::SharedVec::from_slice(&pool, &v).unwrap();
        assert_eq!(
            pool.map_reduce(square, add_u64, &shared).unwrap(),
            Some(338_350)
        );
        for method in [StartMethod::Spawn, StartMethod::ForkServer] {
            let p = get_context(method).pool(2).unwrap();
            assert_eq!(
                p.map_reduce(partial(weighted, w), op, &v).unwrap(),
                Some(3 * 5050),
                "{method:?}"
            );
        }
    });
}

#[test]
fn a_failing_map_reduce_chunk_is_an_error_not_a_partial_result() {
    bounded(LIMIT, || {
        fn panics_at_7(x: u64) -> u64 {
            assert_ne!(x, 7, "seven");
            x
        }
        fn dies_at_7(x: u64) -> u64 {
            if x == 7 {
                std::process::abort();
            }
            x
        }
        let pool = Pool::new(2).unwrap();
        let v: Vec<u64> = (0..100).collect();
        assert!(matches!(
            pool.call()
                .chunksize(5)
                .map_reduce(panics_at_7, add_u64, &v),
            Err(Error::TaskPanicked { .. })
        ));
        assert!(matches!(
            pool.call().chunksize(5).map_reduce(dies_at_7, add_u64, &v),
            Err(Error::WorkerDied { .. })
        ));
        // The pool goes on.
        assert_eq!(pool.map_reduce(square, add_u64, &[2, 3]).unwrap(), Some(13));
    });
}

#[test]
fn bound_values_and_call_options_are_awaitable() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let k: u64 = runtime_value(5);
        let v: Vec<u64> = (0..100).collect();
        let got = pollster::block_on(async {
            let one = pool.apply_async(partial(offset, k), (1,)).unwrap().await;
            let many = pool
                .call()
                .chunksize(7)
                .map_async(partial(offset, k), &v)
                .unwrap()
                .await;
            (one, many)
        });
        assert_eq!(got.0.unwrap(), 1 + k);
        assert_eq!(got.1.unwrap(), v.iter().map(|x| x + k).collect::<Vec<_>>());
    });
}
