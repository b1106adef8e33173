//! `pool.serde()`: the pool's calls for any serde value, with every start
//! method, large values, and every way a task can fail. Every wait is bounded.
#![cfg(feature = "serde")]

mod common;

use common::bounded;
use serde::{Deserialize, Serialize};
use shmpool::{get_context, partial, Error, Pool, StartMethod};
use std::collections::HashMap;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn count_lines(p: String) -> (String, usize) {
    let text = std::fs::read_to_string(&p).unwrap();
    let n = text.lines().count();
    (p, n)
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Verdict {
    Empty,
    Total {
        id: u64,
        units: u32,
        by_item: HashMap<String, u32>,
    },
}

fn check(o: Order) -> Verdict {
    if o.lines.is_empty() {
        return Verdict::Empty;
    }
    let mut by_item = HashMap::new();
    for (name, n) in &o.lines {
        *by_item.entry(name.clone()).or_insert(0) += n;
    }
    Verdict::Total {
        id: o.id,
        units: o.lines.iter().map(|l| l.1).sum(),
        by_item,
    }
}

fn orders(n: u64) -> Vec<Order> {
    (0..n)
        .map(|i| Order {
            id: i,
            customer: format!("customer {i} ✓"),
            lines: (0..i % 4)
                .map(|k| (format!("item{}", k % 3), (i + k) as u32))
                .collect(),
            note: (i % 2 == 0).then(|| "x".repeat(i as usize)),
        })
        .collect()
}

fn upper(s: String) -> String {
    s.to_uppercase()
}

fn concat(a: String, b: String, n: usize) -> String {
    format!("{a}{b}").repeat(n)
}

fn repeat(n: usize) -> String {
    "r".repeat(n)
}

fn panics(s: String) -> String {
    if s == "boom" {
        panic!("no booms here: {s}");
    }
    s
}

fn killed(s: String) -> String {
    if s == "die" {
        // SAFETY: plain syscalls; the worker kills itself.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    s
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shmpool-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn counting_lines_of_real_files_returns_paths_and_counts_in_order() {
    bounded(LIMIT, || {
        let dir = TempDir::new("count-lines");
        let mut paths = Vec::new();
        for i in 0..40 {
            let p = dir.0.join(format!("file{i}.txt"));
            std::fs::write(&p, "line\n".repeat(i * 7)).unwrap();
            paths.push(p.to_string_lossy().into_owned());
        }
        let pool = Pool::new(2).unwrap();
        let counts: Vec<(String, usize)> = pool.serde().map(count_lines, &paths).unwrap();
        let expected: Vec<(String, usize)> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i * 7))
            .collect();
        assert_eq!(counts, expected);
    });
}

#[test]
fn a_derived_struct_goes_in_and_an_enum_comes_out() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let input = orders(1000);
        let expected: Vec<Verdict> = input.iter().cloned().map(check).collect();
        assert_eq!(pool.serde().map(check, &input).unwrap(), expected);
        for chunksize in [1, 7, 1000, 5000] {
            assert_eq!(
                pool.serde().map_chunked(check, &input, chunksize).unwrap(),
                expected,
                "chunksize {chunksize}"
            );
        }
        let empty: Vec<Verdict> = pool.serde().map(check, &[]).unwrap();
        assert!(empty.is_empty());
        assert!(matches!(
            pool.serde().map_chunked(check, &input, 0),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn every_call_shape_gives_what_its_pod_twin_gives() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde();
        let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
        let upper_words: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();

        let triples: Vec<(String, String, usize)> = words
            .iter()
            .map(|w| (w.clone(), "-".to_string(), w.len() % 3))
            .collect();
        let joined: Vec<String> = triples
            .iter()
            .cloned()
            .map(|(a, b, n)| concat(a, b, n))
            .collect();
        assert_eq!(s.starmap(concat, &triples).unwrap(), joined);
        assert_eq!(s.starmap_chunked(concat, &triples, 1).unwrap(), joined);

        assert_eq!(
            s.apply(concat, ("a".into(), "b".into(), 2)).unwrap(),
            "abab"
        );
        let pending: Vec<_> = (0..50)
            .map(|n| s.apply_async(repeat, (n,)).unwrap())
            .collect();
        for (n, r) in pending.iter().enumerate() {
            assert_eq!(r.get(WAIT).unwrap(), "r".repeat(n));
        }

        let ordered: Vec<String> = s
            .imap(upper, words.clone())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ordered, upper_words);
        let ordered: Vec<String> = s
            .imap_chunked(upper, words.clone(), 13)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ordered, upper_words);
        let mut any: Vec<String> = s
            .imap_unordered(upper, words.clone())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        any.sort();
        let mut sorted = upper_words.clone();
        sorted.sort();
        assert_eq!(any, sorted);
        let mut any: Vec<String> = s
            .imap_unordered_chunked(upper, words.clone(), 64)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        any.sort();
        assert_eq!(any, sorted);
    });
}

#[test]
fn every_start_method_runs_serde_calls() {
    bounded(LIMIT, || {
        for method in [
            StartMethod::Fork,
            StartMethod::ForkServer,
            StartMethod::Spawn,
        ] {
            let pool = get_context(method).pool(2).unwrap();
            let input = orders(200);
            let expected: Vec<Verdict> = input.iter().cloned().map(check).collect();
            assert_eq!(
                pool.serde().map(check, &input).unwrap(),
                expected,
                "{method:?}"
            );
            assert_eq!(
                pool.serde()
                    .apply(concat, ("x".into(), "y".into(), 3))
                    .unwrap(),
                "xyxyxy"
            );
            let got: Vec<String> = pool
                .serde()
                .imap(upper, ["a", "b"].map(String::from))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, ["A", "B"]);
            pool.close();
            pool.join().unwrap();
        }
    });
}

#[test]
fn megabyte_strings_travel_both_ways() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let big: Vec<String> = (0..6u8)
            .map(|i| char::from(b'a' + i).to_string().repeat(1 << 20))
            .collect();
        let up = pool.serde().map(upper, &big).unwrap();
        assert_eq!(up.len(), 6);
        for (u, b) in up.iter().zip(&big) {
            assert_eq!(u.len(), 1 << 20);
            assert_eq!(*u, b.to_uppercase());
        }
        // One chunk holding all six: 6 MiB of results fit the default room.
        assert_eq!(pool.serde().map_chunked(upper, &big, 6).unwrap(), up);
        // A result far larger than its input: 12 MiB from 8 bytes.
        assert_eq!(
            pool.serde().apply(repeat, (12 << 20,)).unwrap().len(),
            12 << 20
        );
    });
}

#[test]
fn results_larger_than_their_room_are_capacity_exceeded_and_the_pool_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde().result_capacity(1 << 20);
        match s.apply(repeat, (4 << 20,)) {
            Err(Error::CapacityExceeded(why)) => {
                // One result: a smaller chunk would not help.
                assert!(!why.contains("chunksize"), "{why}");
                assert!(why.contains("result_capacity(bytes)"), "{why}");
                assert!(
                    why.contains("need at least 41943"),
                    "says what it needed: {why}"
                );
                assert!(why.contains("than the 1048576 reserved"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // One chunk of three 512 KiB results in 1 MiB of room.
        let sizes = vec![512 << 10; 3];
        match s.map_chunked(repeat, &sizes, 3) {
            Err(Error::CapacityExceeded(why)) => {
                assert!(why.contains("a smaller chunksize"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // A chunk per item fits.
        let got = s.map_chunked(repeat, &sizes, 1).unwrap();
        assert!(got.iter().all(|r| r.len() == 512 << 10));
        // Past the default room too, and then with more room asked for.
        assert!(matches!(
            pool.serde().apply(repeat, (40 << 20,)),
            Err(Error::CapacityExceeded(_))
        ));
        let more = pool.serde().result_capacity(64 << 20);
        assert_eq!(more.apply(repeat, (40 << 20,)).unwrap().len(), 40 << 20);
        let mut it = s.imap(repeat, [1, 2 << 20, 3]).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), "r");
        assert!(matches!(it.next(), Some(Err(Error::CapacityExceeded(_)))));
        assert_eq!(it.next().unwrap().unwrap(), "rrr");
        assert!(it.next().is_none());
        assert_eq!(pool.serde().apply(upper, ("ok".into(),)).unwrap(), "OK");
    });
}

#[test]
fn a_panicking_task_is_task_panicked_and_the_pool_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde();
        let mut words: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        words[57] = "boom".into();
        match s.map(panics, &words) {
            Err(Error::TaskPanicked { message }) => {
                assert!(message.contains("no booms"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.apply(panics, ("boom".into(),)),
            Err(Error::TaskPanicked { .. })
        ));
        let r = s.apply_async(panics, ("boom".into(),)).unwrap();
        assert!(matches!(r.get(WAIT), Err(Error::TaskPanicked { .. })));
        let got: Vec<Result<String, Error>> = s
            .imap(panics, ["a", "boom", "c"].map(String::from))
            .unwrap()
            .collect();
        assert_eq!(got[0].as_deref().unwrap(), "a");
        assert!(matches!(got[1], Err(Error::TaskPanicked { .. })));
        assert_eq!(got[2].as_deref().unwrap(), "c");
        assert_eq!(s.apply(upper, ("after".into(),)).unwrap(), "AFTER");
    });
}

#[test]
fn a_killed_worker_is_worker_died_and_the_pool_goes_on() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde();
        let mut words: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        words[13] = "die".into();
        match s.map(killed, &words) {
            Err(Error::WorkerDied { signal, .. }) => assert_eq!(signal, Some(libc::SIGKILL)),
            other => panic!("{other:?}"),
        }
        let r = s.apply_async(killed, ("die".into(),)).unwrap();
        assert!(matches!(r.get(WAIT), Err(Error::WorkerDied { .. })));
        assert_eq!(s.map(upper, &words).unwrap()[13], "DIE");
    });
}

#[test]
fn calls_on_a_closed_pool_are_refused() {
    bounded(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        pool.close();
        assert!(matches!(
            pool.serde().map(upper, &["a".to_string()]),
            Err(Error::Closed)
        ));
        assert!(matches!(
            pool.serde().apply(upper, ("a".into(),)),
            Err(Error::Closed)
        ));
        assert!(pool.serde().imap(upper, Vec::<String>::new()).is_err());
        pool.join().unwrap();
    });
}

fn prefix(p: String, s: String) -> String {
    format!("{p}{s}")
}

fn tag((name, n): (String, u32), s: String, k: usize) -> String {
    format!("{name}{n}:{s}{k}")
}

fn lower(s: String) -> String {
    s.to_lowercase()
}

#[test]
fn partial_binds_a_serde_value_for_every_call_shape() {
    bounded(LIMIT, || {
        for method in [StartMethod::Fork, StartMethod::Spawn] {
            let pool = get_context(method).pool(2).unwrap();
            let s = pool.serde();
            let p = "é-prefix/".repeat(std::env::args().count()); // known at run time
            let words: Vec<String> = (0..500).map(|i| format!("w{i}")).collect();
            let expected: Vec<String> = words.iter().map(|w| format!("{p}{w}")).collect();
            let f = partial(prefix, p.clone());
            assert_eq!(s.map(f.clone(), &words).unwrap(), expected, "{method:?}");
            assert_eq!(s.map_chunked(f.clone(), &words, 1).unwrap(), expected);
            assert_eq!(s.apply(f.clone(), ("x".into(),)).unwrap(), format!("{p}x"));
            let r = s.apply_async(f.clone(), ("y".into(),)).unwrap();
            assert_eq!(r.get(WAIT).unwrap(), format!("{p}y"));
            let got: Vec<String> = s
                .imap(f.clone(), words.clone())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, expected);
            let mut got: Vec<String> = s
                .imap_unordered_chunked(f, words.clone(), 9)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            got.sort();
            let mut sorted = expected.clone();
            sorted.sort();
            assert_eq!(got, sorted);
            // A tuple bound, and starmap over the remaining arguments.
            let pairs = vec![("a".to_string(), 1usize), ("b".to_string(), 2)];
            assert_eq!(
                s.starmap(partial(tag, ("n".to_string(), 7u32)), &pairs)
                    .unwrap(),
                ["n7:a1", "n7:b2"]
            );
            pool.close();
            pool.join().unwrap();
        }
    });
}

#[test]
fn fn_pointers_are_serde_tasks() {
    bounded(LIMIT, || {
        type Named = (&'static str, fn(String) -> String);
        let table: [Named; 2] = [("upper", upper), ("lower", lower)];
        for method in [StartMethod::Fork, StartMethod::ForkServer] {
            let pool = get_context(method).pool(2).unwrap();
            let words: Vec<String> = vec!["MiXed".into(), "Case".into()];
            for (name, f) in table {
                let expected: Vec<String> = words.iter().cloned().map(f).collect();
                assert_eq!(pool.serde().map(f, &words).unwrap(), expected, "{name}");
                assert_eq!(
                    pool.serde().apply(f, ("aB".into(),)).unwrap(),
                    f("aB".into())
                );
                // A pointer bound in a partial.
                let p = partial(prefix, "p-".to_string());
                assert_eq!(pool.serde().map(p, &words).unwrap()[0], "p-MiXed");
            }
            pool.close();
            pool.join().unwrap();
        }
    });
}

/// A value whose `Serialize` fails, as a hand-written one can.
#[derive(Deserialize, Debug, Clone, PartialEq)]
struct Refuses(u8);

impl Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return Err(serde::ser::Error::custom("refused"));
        }
        s.serialize_u8(self.0)
    }
}

fn refuse(n: u8) -> Refuses {
    Refuses(n)
}

fn keep(r: Refuses) -> u8 {
    r.0
}

#[test]
fn values_that_cannot_be_encoded_are_invalid_arguments_on_either_side() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde();
        // In the parent: nothing is submitted.
        assert!(matches!(
            s.map(keep, &[Refuses(1), Refuses(0)]),
            Err(Error::InvalidArgument(why)) if why.contains("cannot encode")
        ));
        // In the worker: the chunk reports it.
        match s.map(refuse, &[1, 2, 0, 3]) {
            Err(Error::InvalidArgument(why)) => assert!(why.contains("cannot be encoded"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.map(refuse, &[1, 2]).unwrap(), [Refuses(1), Refuses(2)]);
    });
}

fn slow_upper(s: String) -> String {
    std::thread::sleep(Duration::from_millis(200));
    s.to_uppercase()
}

#[test]
fn an_awaited_serde_result_wakes_its_task() {
    bounded(LIMIT, || {
        use std::future::IntoFuture;
        let pool = Pool::new(2).unwrap();
        let r = pool
            .serde()
            .apply_async(slow_upper, ("abc".into(),))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), r.into_future()).await
        });
        // Woken when the task finishes (~0.2 s), not found by a later poll.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(got.expect("woken before the timeout").unwrap(), "ABC");
    });
}

fn aborts(s: String) -> String {
    if s == "abort" {
        std::process::abort()
    }
    s
}

fn aborts_at_57(x: u64) -> u64 {
    if x == 57 {
        std::process::abort()
    }
    x
}

fn aborts_twice(s: String, n: usize) -> String {
    aborts(s).repeat(n)
}

fn naps(s: String) -> String {
    if s == "nap" {
        std::thread::sleep(Duration::from_secs(60));
    }
    s
}

/// The elements a failed serde map names, failing the test unless it
/// failed with `WorkerDied`.
fn died_on<T: std::fmt::Debug>(
    got: Result<T, Error>,
    what: &str,
) -> Option<std::ops::Range<usize>> {
    match got {
        Err(e @ Error::WorkerDied { .. }) => e.elements(),
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn a_dead_chunk_names_its_elements_in_every_serde_map() {
    bounded(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let s = pool.serde();
        let mut words: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        words[57] = "abort".into();
        let pairs: Vec<(String, usize)> = words.iter().map(|w| (w.clone(), 2)).collect();
        // Chunks of ceil(100 / (4 * 2)) = 13 elements by default, as for
        // the pool's own map: 57 lies in 52..65.
        let numbers: Vec<u64> = (0..100).collect();
        assert_eq!(
            died_on(pool.map(aborts_at_57, &numbers), "Pod map"),
            Some(52..65)
        );
        assert_eq!(died_on(s.map(aborts, &words), "map"), Some(52..65));
        assert_eq!(
            died_on(s.map_chunked(aborts, &words, 1), "map_chunked"),
            Some(57..58)
        );
        assert_eq!(
            died_on(s.map_chunked(aborts, &words, 10), "map_chunked"),
            Some(50..60)
        );
        assert_eq!(
            died_on(s.starmap(aborts_twice, &pairs), "starmap"),
            Some(52..65)
        );
        assert_eq!(
            died_on(
                s.starmap_chunked(aborts_twice, &pairs, 7),
                "starmap_chunked"
            ),
            Some(56..63)
        );
        // As an imap does.
        let errors: Vec<Error> = s
            .imap_chunked(aborts, words.clone(), 10)
            .unwrap()
            .filter_map(Result::err)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].elements(), Some(50..60));
        // A panic names its chunk too, and the pool goes on.
        words[57] = "boom".into();
        assert!(
            matches!(s.map(panics, &words), Err(e @ Error::TaskPanicked { .. }) if e.elements().is_some_and(|r| r.contains(&57)))
        );
        words[57] = "fine".into();
        assert_eq!(s.map(aborts, &words).unwrap(), words);
    });
}

#[test]
fn a_timed_out_chunk_names_its_elements_in_a_serde_map() {
    bounded(LIMIT, || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let s = pool.serde();
        let mut words: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        words[57] = "nap".into();
        for (chunksize, want) in [(1, 57..58), (13, 52..65)] {
            match s.map_chunked(naps, &words, chunksize) {
                Err(e @ Error::TaskTimedOut { .. }) => assert_eq!(e.elements(), Some(want)),
                other => panic!("chunksize {chunksize}: {other:?}"),
            }
        }
        words[57] = "awake".into();
        assert_eq!(s.map(naps, &words).unwrap(), words);
    });
}

#[test]
fn with_retries_a_dying_serde_chunk_is_split_until_the_error_names_one_element() {
    bounded(LIMIT, || {
        let mut words: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        words[13] = "abort".into();
        let pairs: Vec<(String, usize)> = words.iter().map(|w| (w.clone(), 1)).collect();
        // The pool's own map over the same chunks narrows the same way.
        for (retries, want) in [
            (1, 10..15),
            (2, 12..15),
            (3, 13..15),
            (4, 13..14),
            (9, 13..14),
        ] {
            let pool = Pool::builder()
                .processes(2)
                .retries(retries)
                .build()
                .unwrap();
            let s = pool.serde();
            let got = died_on(s.map_chunked(aborts, &words, 10), "map");
            assert_eq!(got, Some(want.clone()), "map, retries {retries}");
            let got = died_on(s.starmap_chunked(aborts_twice, &pairs, 10), "starmap");
            assert_eq!(got, Some(want), "starmap, retries {retries}");
        }
        // A chunk whose worker dies once comes back, split, with every
        // result in its place.
        let marker = format!("/tmp/shmpool-serde-once-{}", std::process::id());
        let _ = std::fs::remove_file(&marker);
        let pool = Pool::builder().processes(2).retries(2).build().unwrap();
        let got = pool.serde().map_chunked(aborts_once, &words, 10);
        let _ = std::fs::remove_file(&marker);
        let want: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
        assert_eq!(got.unwrap(), want);
        assert_eq!(pool.stats().retries, 1);
    });
}

/// Upper-cases `s`, killing its worker the first time it sees "abort" in
/// this test run (a marker file, named after the test process, records
/// that it did).
fn aborts_once(s: String) -> String {
    if s == "abort" {
        let marker = format!(
            "/tmp/shmpool-serde-once-{}",
            std::os::unix::process::parent_id()
        );
        let first = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok();
        if first {
            std::process::abort()
        }
    }
    s.to_uppercase()
}
