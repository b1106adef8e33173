//! `Imap` as a `futures_core::Stream` (feature `async`). Every wait is bounded.
#![cfg(feature = "async")]

mod common;

use common::bounded;
use futures_util::StreamExt;
use shmpool::{Error, Pool};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}
fn nap_then_echo(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
fn fails_on_3(x: u64) -> u64 {
    assert!(x != 3, "three");
    x
}

#[test]
fn an_imap_stream_is_consumed_with_stream_ext_in_order() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let got: Vec<u64> = rt.block_on(async {
            let mut it = pool.imap(square, 0..200u64).unwrap().into_stream();
            let mut got = Vec::new();
            while let Some(r) = it.next().await {
                got.push(r.unwrap());
            }
            got
        });
        assert_eq!(got, (0..200u64).map(square).collect::<Vec<_>>());
    });
}

#[test]
fn an_unordered_stream_yields_every_result_as_it_completes() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let got: Vec<u64> = futures_executor::block_on(async {
            pool.imap_unordered(nap_then_echo, [200u64, 1, 1, 1])
                .unwrap()
                .into_stream()
                .map(|r| r.unwrap())
                .collect()
                .await
        });
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 1, 1, 200]);
        assert_eq!(*got.last().unwrap(), 200, "the slow one came last: {got:?}");
    });
}

#[test]
fn a_stream_pulls_its_input_only_as_results_are_consumed() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let pulled = Rc::new(Cell::new(0u64));
        let counter = Rc::clone(&pulled);
        let input = (0..u64::MAX).inspect(move |_| counter.set(counter.get() + 1));
        let first: Vec<u64> = futures_executor::block_on(async {
            let stream = pool.imap_chunked(square, input, 4).unwrap().into_stream();
            stream.take(10).map(|r| r.unwrap()).collect().await
        });
        assert_eq!(first, (0..10u64).map(square).collect::<Vec<_>>());
        // An endless input: only a bounded window was pulled.
        assert!(pulled.get() < 100_000, "pulled {}", pulled.get());
    });
}

#[test]
fn an_imap_itself_is_a_stream() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let mut it = pool.imap(square, 0..10u64).unwrap();
        let got = futures_executor::block_on(async {
            let mut got = Vec::new();
            while let Some(r) = StreamExt::next(&mut it).await {
                got.push(r.unwrap());
            }
            got
        });
        assert_eq!(got, (0..10u64).map(square).collect::<Vec<_>>());
    });
}

#[test]
fn a_stream_yields_a_failed_chunk_as_an_error_and_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let got: Vec<Result<u64, Error>> = pollster::block_on(
            pool.imap(fails_on_3, 0..6u64)
                .unwrap()
                .into_stream()
                .collect(),
        );
        assert_eq!(got.len(), 6);
        assert!(
            matches!(&got[3], Err(Error::TaskPanicked { message }) if message.contains("three"))
        );
        assert_eq!(got[5].as_ref().unwrap(), &5);
    });
}

#[test]
fn a_stream_of_a_terminated_pool_ends_with_terminated_errors() {
    bounded(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(1).unwrap());
        let p = std::sync::Arc::clone(&pool);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            p.terminate();
        });
        let got: Vec<Result<u64, Error>> = futures_executor::block_on(
            pool.imap(nap_then_echo, [60_000u64, 60_000])
                .unwrap()
                .into_stream()
                .collect(),
        );
        killer.join().unwrap();
        assert!(!got.is_empty());
        assert!(
            got.iter().all(|r| matches!(r, Err(Error::Terminated))),
            "{got:?}"
        );
    });
}
