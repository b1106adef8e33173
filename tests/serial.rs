//! `shmpool::serial`: Queue and Pipe for any serde value (feature `serde`).
//! Every wait is bounded.
#![cfg(feature = "serde")]

mod common;

use common::bounded;
use serde::{Deserialize, Serialize};
use shmpool::serial::{Connection, Pipe, Queue};
use shmpool::{Error, Pool, Process};
use std::collections::BTreeMap;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Note {
    Text { from: u32, words: String },
    Numbers(Vec<u64>),
    Nothing,
}

fn note(from: u32, i: u32) -> Note {
    match i % 3 {
        0 => Note::Text {
            from,
            words: "é".repeat(i as usize % 40),
        },
        1 => Note::Numbers((0..u64::from(i % 50)).collect()),
        _ => Note::Nothing,
    }
}

fn send_notes(q: Queue<(u32, u32, Note)>, from: u32, n: u32) {
    for i in 0..n {
        q.put(&(from, i, note(from, i))).unwrap();
    }
}

fn send_from_task(q: Queue<(u32, u32, Note)>, i: u32) -> u32 {
    q.put(&(99, i, note(99, i))).unwrap();
    i
}

// Python's docs (https://docs.python.org/3/library/multiprocessing.html#exchanging-objects-between-processes):
// "Queues are thread and process safe."
#[test]
fn values_of_any_shape_cross_processes_and_pool_tasks_exactly_once() {
    bounded(LIMIT, || {
        let q = Queue::<(u32, u32, Note)>::new(64).unwrap();
        let mut senders: Vec<Process> = (0..3)
            .map(|from| Process::new(send_notes, (q, from, 200)))
            .collect();
        senders.iter_mut().for_each(|p| p.start().unwrap());
        let pool = Pool::new(2).unwrap();
        let tasks = pool
            .starmap_async(
                send_from_task,
                &(0..100).map(|i| (q, i)).collect::<Vec<_>>(),
            )
            .unwrap();
        let mut got: BTreeMap<(u32, u32), Note> = BTreeMap::new();
        for _ in 0..700 {
            let (from, i, n) = q.get_timeout(WAIT).unwrap();
            assert!(got.insert((from, i), n).is_none(), "({from}, {i}) twice");
        }
        assert_eq!(tasks.get(Some(WAIT)).unwrap().len(), 100);
        for p in &mut senders {
            assert_eq!(p.join(Some(WAIT)).unwrap(), Some(0));
        }
        for ((from, i), n) in &got {
            assert_eq!(*n, note(*from, *i));
        }
        assert_eq!(q.try_get().unwrap(), None);
    });
}

#[test]
fn a_message_larger_than_its_frame_is_refused_before_sending() {
    let q = Queue::<String, 64>::new(4).unwrap();
    q.put(&"short".to_string()).unwrap();
    match q.put(&"x".repeat(100)) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("64-byte frame"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        q.len().unwrap(),
        1,
        "nothing of the refused message was queued"
    );
    assert_eq!(q.get_timeout(WAIT).unwrap(), "short");
    q.close().unwrap();
    assert!(matches!(q.put(&String::new()), Err(Error::Closed)));
    assert!(matches!(q.get_timeout(WAIT), Err(Error::Closed)));
}

fn echo_lengths(conn: Connection<Vec<String>>) {
    while let Ok(words) = conn.recv_timeout(WAIT) {
        let lengths = words.iter().map(|w| w.len().to_string()).collect();
        conn.send(&lengths).unwrap();
    }
}

#[test]
fn a_duplex_pipe_carries_values_both_ways_and_a_one_way_pipe_refuses_the_wrong_direction() {
    bounded(LIMIT, || {
        let (mine, theirs) = Pipe::new::<Vec<String>>().unwrap();
        let mut child = Process::new(echo_lengths, (theirs,));
        child.start().unwrap();
        for n in 0..20usize {
            let words: Vec<String> = (0..n).map(|k| "ab".repeat(k)).collect();
            mine.send(&words).unwrap();
            assert!(mine.poll(Some(WAIT)).unwrap());
            let lengths = mine.recv_timeout(WAIT).unwrap();
            let want: Vec<String> = (0..n).map(|k| (2 * k).to_string()).collect();
            assert_eq!(lengths, want);
        }
        mine.close().unwrap(); // the child's recv fails: it exits
        assert_eq!(child.join(Some(WAIT)).unwrap(), Some(0));

        let (rx, tx) = Pipe::one_way::<Option<f64>>().unwrap();
        tx.send(&Some(2.5)).unwrap();
        tx.send(&None).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Some(2.5));
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), None);
        assert!(matches!(rx.send(&None), Err(Error::InvalidArgument(_))));
        assert!(matches!(tx.recv(), Err(Error::InvalidArgument(_))));
    });
}

#[test]
fn the_serde_pipe_example_prints_what_pythons_pipe_example_prints() {
    let out = std::process::Command::new(common::example("serde_pipe"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[42, None, 'hello']\n"
    );
}
