//! `shmpool::Manager` (feature `manager`): a server process holding objects
//! of any serde type, used through proxies from other processes, locally and
//! over TCP. Every wait is bounded.
#![cfg(feature = "manager")]

mod common;

use common::bounded;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shmpool::manager::{
    BarrierProxy, Borrowed, ConditionProxy, DictProxy, EventProxy, LockProxy, QueueProxy,
    SemaphoreProxy, ValueProxy,
};
use shmpool::{Error, Manager, Pool, Process, StartMethod};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// Tests that count this process's children or manager sockets take it
/// exclusively; every other test that starts processes takes it shared.
static CENSUS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CENSUS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    CENSUS.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether `pid` no longer runs (gone, or a zombie not yet reaped by init).
fn not_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => true,
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// The abstract Unix socket names of this process's managers (listeners and
/// their accepted connections show the same name: each name once).
fn manager_sockets() -> std::collections::BTreeSet<String> {
    let me = format!("@shmpool-manager-{}-", std::process::id());
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|name| name.starts_with(&me))
        .map(str::to_owned)
        .collect()
}

#[test]
fn pythons_example_prints_what_python_prints() {
    let _census = shared();
    let path = common::example("manager");
    let out = bounded(LIMIT, move || {
        std::process::Command::new(path).output().unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{0.25: None, 1: '1', '2': 2}\n[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n"
    );
}

fn add_from_task(d: Borrowed<DictProxy<u64, String>>, i: u64) -> u64 {
    d.insert(&i, &format!("task {i}")).unwrap();
    i
}

#[test]
fn proxies_are_arguments_of_pool_tasks_and_work_with_every_start_method() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u64, String>().unwrap();
        let pool = Pool::new(2).unwrap();
        let args: Vec<_> = (0..20).map(|i| (d.borrowed(), i)).collect();
        assert_eq!(
            pool.starmap(add_from_task, &args).unwrap(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(d.len().unwrap(), 20);
        assert_eq!(d.get(&7).unwrap().as_deref(), Some("task 7"));

        for method in [StartMethod::Spawn, StartMethod::ForkServer] {
            let mut m = Manager::builder().start_method(method).start().unwrap();
            let l = m.list::<String>().unwrap();
            l.push(&method.to_string()).unwrap();
            assert_eq!(l.to_vec().unwrap(), [method.to_string()]);
            let pid = m.server_pid().unwrap();
            m.shutdown().unwrap();
            assert!(
                wait_until(Duration::from_secs(5), || not_running(pid)),
                "{method}"
            );
        }
    });
}

fn insert_many(d: Borrowed<DictProxy<(u32, u32), u32>>, who: u32, n: u32) {
    for i in 0..n {
        d.insert(&(who, i), &i).unwrap();
    }
}

#[test]
fn sixteen_processes_inserting_at_once_lose_no_key() {
    let _census = shared();
    // 16 × 10,000 as the target states; each insert is a round trip to the
    // server, about 20 µs in a debug build on two cores.
    const PROCESSES: u32 = 16;
    const EACH: u32 = 10_000;
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<(u32, u32), u32>().unwrap();
        let started = Instant::now();
        let mut ps: Vec<Process> = (0..PROCESSES)
            .map(|who| Process::new(insert_many, (d.borrowed(), who, EACH)))
            .collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        for p in &mut ps {
            assert_eq!(p.join(Some(Duration::from_secs(100))).unwrap(), Some(0));
        }
        eprintln!("{} inserts in {:?}", PROCESSES * EACH, started.elapsed());
        assert_eq!(d.len().unwrap(), (PROCESSES * EACH) as usize);
        assert_eq!(d.keys().unwrap().len(), (PROCESSES * EACH) as usize);
        assert_eq!(d.get(&(15, 9_999)).unwrap(), Some(9_999));
    });
}

fn hold_until_killed(lock: Borrowed<LockProxy>, held: Borrowed<EventProxy>) {
    let _guard = lock.lock().unwrap();
    held.set().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_lock_whose_holder_dies_is_released_and_the_next_holder_is_told() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let (lock, held) = (manager.lock().unwrap(), manager.event().unwrap());
        let mut p = Process::new(hold_until_killed, (lock.borrowed(), held.borrowed()));
        p.start().unwrap();
        assert!(held.wait_timeout(Duration::from_secs(30)).unwrap());
        assert!(lock.try_lock().unwrap().is_none(), "the child holds it");
        p.kill();
        p.join(Some(Duration::from_secs(10))).unwrap();
        // The server sees the connection close and frees the lock.
        let waited = Instant::now();
        assert!(matches!(
            lock.lock_timeout(Duration::from_secs(10)),
            Err(Error::OwnerDied)
        ));
        assert!(waited.elapsed() < Duration::from_secs(5));
        let guard = lock.lock_timeout(Duration::from_secs(1)).unwrap();
        drop(guard);
        assert!(lock.try_lock().unwrap().is_some());
    });
}

fn insert_forever(d: Borrowed<DictProxy<u64, Vec<u8>>>) {
    for i in 0.. {
        d.insert(&i, &vec![7; 4096]).unwrap();
    }
}

fn get_forever(q: Borrowed<QueueProxy<u64>>) {
    let _ = q.get();
}

#[test]
fn clients_killed_mid_request_leave_the_server_serving_the_others() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u64, Vec<u8>>().unwrap();
        let q = manager.queue::<u64>().unwrap();
        for round in 0..5 {
            let mut busy = Process::new(insert_forever, (d.borrowed(),));
            let mut waiting = Process::new(get_forever, (q.borrowed(),));
            busy.start().unwrap();
            waiting.start().unwrap();
            let before = d.len().unwrap();
            assert!(wait_until(Duration::from_secs(30), || d.len().unwrap() > before + 50));
            std::thread::sleep(Duration::from_millis(round * 3));
            busy.kill();
            waiting.kill();
            busy.join(Some(Duration::from_secs(10))).unwrap();
            waiting.join(Some(Duration::from_secs(10))).unwrap();
        }
        // The dead getter took nothing: the item goes to a live one.
        q.put(&42).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 42);
        // A killed inserter's last request, sent before it died, may still be
        // applied: wait until the count holds still.
        let mut n = d.len().unwrap();
        assert!(wait_until(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(200));
            let now = d.len().unwrap();
            std::mem::replace(&mut n, now) == now
        }));
        d.insert(&u64::MAX, &vec![]).unwrap();
        assert_eq!(d.len().unwrap(), n + 1);
    });
}

// A client speaking the wire protocol by hand (the layout is in
// docs/ARCHITECTURE.md, "Manager").
fn read_frame(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn write_frame(s: &mut impl Write, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    s.write_all(body).unwrap();
}

/// Runs the client side of the handshake with `key`; whether it was welcomed.
fn handshake(s: &mut TcpStream, key: &[u8]) -> bool {
    try_handshake(s, key).unwrap()
}

/// [`handshake`]; an error if the server closed the connection on us.
fn try_handshake(s: &mut (impl Read + Write), key: &[u8]) -> std::io::Result<bool> {
    let challenge = read_frame(s)?;
    assert_eq!(&challenge[..16], b"shmpool-manager1");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(b"client");
    mac.update(&challenge[16..]);
    let mut answer = mac.finalize().into_bytes().to_vec();
    answer.extend_from_slice(&[3; 32]);
    s.write_all(&(answer.len() as u32).to_le_bytes())?;
    s.write_all(&answer)?;
    Ok(read_frame(s)?.starts_with(b"#WELCOME"))
}

/// Whether the server closes `s` within `limit` (reading what it sends).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a challenge or verdict: read on
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

#[test]
fn bad_peers_are_disconnected_in_bounded_time_while_a_good_client_goes_on() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"the key")
            .frame_limit(1 << 16)
            .handshake_timeout(Duration::from_millis(500))
            .start()
            .unwrap();
        let addr: SocketAddr = server.address().unwrap();
        assert_ne!(addr.port(), 0);
        let client = Manager::connect(addr, b"the key").unwrap();
        let d = client.dict_named::<u32, u32>("counts").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let good = {
            let stop = stop.clone();
            let d = d.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    d.insert(&n, &n).unwrap();
                    n += 1;
                }
                n
            })
        };
        let patience = Duration::from_secs(3);

        // A wrong key: refused, through the library and by hand.
        assert!(matches!(
            Manager::connect(addr, b"not the key"),
            Err(Error::AuthenticationFailed)
        ));
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(!handshake(&mut s, b"not the key"));
        assert!(closed_within(&mut s, patience), "wrong key");

        // Garbage instead of an answer: its first bytes read as a huge length.
        let mut s = TcpStream::connect(addr).unwrap();
        read_frame(&mut s).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(closed_within(&mut s, patience), "garbage");

        // A silent peer: closed after the handshake timeout.
        let mut s = TcpStream::connect(addr).unwrap();
        let silent = Instant::now();
        assert!(closed_within(&mut s, patience), "silent peer");
        assert!(silent.elapsed() >= Duration::from_millis(400));

        // Authenticated, then a frame over the limit: closed at its header.
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(handshake(&mut s, b"the key"));
        s.write_all(&((1u32 << 16) + 1).to_le_bytes()).unwrap();
        assert!(closed_within(&mut s, patience), "oversized frame");

        // Authenticated, then half a frame and silence.
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(handshake(&mut s, b"the key"));
        s.write_all(&100u32.to_le_bytes()).unwrap();
        s.write_all(&[0; 10]).unwrap();
        assert!(closed_within(&mut s, patience), "half a frame");

        // Authenticated, then a whole frame that decodes as nothing: an
        // answer (an error), and the connection stays usable.
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(handshake(&mut s, b"the key"));
        write_frame(&mut s, &[0xff; 40]);
        s.set_read_timeout(Some(patience)).unwrap();
        let reply = read_frame(&mut s).unwrap();
        assert_eq!(reply[0], 1, "an Err reply: {reply:?}");
        write_frame(&mut s, &[0xff; 40]);
        assert!(read_frame(&mut s).is_ok());

        // A request over the limit is refused before it is sent; the
        // connection goes on.
        let big = client.value(&0u32).unwrap();
        let list = client.list::<Vec<u8>>().unwrap();
        assert!(matches!(
            list.push(&vec![0; 1 << 17]),
            Err(Error::InvalidArgument(_))
        ));
        big.set(&5).unwrap();
        assert_eq!(big.get().unwrap(), 5);

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let inserted = good.join().unwrap();
        assert!(inserted > 0);
        assert_eq!(d.len().unwrap(), inserted as usize);
    });
}

#[test]
fn tcp_without_an_authkey_and_an_address_in_use_are_refused_at_start() {
    let _census = exclusive();
    bounded(LIMIT, || {
        assert!(matches!(
            Manager::builder().address("127.0.0.1:0").start(),
            Err(Error::InvalidArgument(m)) if m.contains("authkey")
        ));
        let first = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"k")
            .start()
            .unwrap();
        let taken = first.address().unwrap();
        let children_before = common::children().len();
        match Manager::builder().address(taken).authkey(b"k").start() {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
            other => panic!("{other:?}"),
        }
        assert!(wait_until(Duration::from_secs(5), || common::children()
            .len()
            <= children_before));
        // Nothing listens where no manager is.
        drop(first);
        assert!(matches!(
            Manager::connect(taken, b"k"),
            Err(Error::PeersGone)
        ));
    });
}

#[test]
fn values_read_as_another_type_are_decode_errors() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict_named::<String, u32>("config").unwrap();
        d.insert("retries", &3).unwrap();
        // Refused at lookup, before any value is read.
        assert!(matches!(
            manager.dict_named::<String, String>("config"),
            Err(Error::Decode(m)) if m.contains("u32")
        ));
        let ns = manager.namespace().unwrap();
        ns.set("x", &"text").unwrap();
        assert!(matches!(ns.get::<u32>("x"), Err(Error::Decode(_))));
        assert!(matches!(
            manager.queue_named::<u32>("config"),
            Err(Error::InvalidArgument(m)) if m.contains("not a queue")
        ));
        assert_eq!(d.get("retries").unwrap(), Some(3), "still served");
    });
}

#[test]
fn shutdown_and_drop_leave_no_process_no_socket_and_no_shared_memory() {
    let _census = exclusive();
    bounded(LIMIT, || {
        let shm_before = common::shm_entries();
        let mut manager = Manager::start().unwrap();
        let q = manager.queue::<u32>().unwrap();
        q.put(&1).unwrap();
        let pid = manager.server_pid().unwrap();
        assert_eq!(manager_sockets().len(), 1);
        // A client blocked in get() when the server stops is told.
        let b = q.borrowed();
        let blocked = std::thread::spawn(move || {
            let q = b;
            q.get().unwrap();
            q.get()
        });
        std::thread::sleep(Duration::from_millis(100));
        manager.shutdown().unwrap();
        assert!(common::is_gone(pid), "shutdown reaps the server");
        assert!(matches!(blocked.join().unwrap(), Err(Error::PeersGone)));
        let told = Instant::now();
        assert!(matches!(q.put(&2), Err(Error::PeersGone)));
        assert!(told.elapsed() < Duration::from_secs(1));
        assert!(manager_sockets().is_empty());
        manager.shutdown().unwrap(); // again: nothing to do

        let dropped = Manager::start().unwrap();
        let pid = dropped.server_pid().unwrap();
        drop(dropped);
        assert!(common::is_gone(pid), "drop reaps the server");
        assert!(manager_sockets().is_empty());

        // A server killed from outside: calls fail at once, and shutdown
        // still reaps it.
        let mut killed = Manager::start().unwrap();
        let l = killed.list::<u8>().unwrap();
        l.push(&1).unwrap();
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(killed.server_pid().unwrap() as i32, libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(5), || matches!(
            l.push(&2),
            Err(Error::PeersGone)
        )));
        let pid = killed.server_pid().unwrap();
        killed.shutdown().unwrap();
        assert!(common::is_gone(pid));
        assert_eq!(common::shm_entries(), shm_before);
    });
}

/// Set in the child copy of this test binary that plays the doomed parent.
const DOOMED_PARENT: &str = "SHMPOOL_TEST_DOOMED_MANAGER_PARENT";

#[test]
fn doomed_parent() {
    if std::env::var_os(DOOMED_PARENT).is_none() {
        return; // only runs as the helper of the test below
    }
    let manager = Manager::start().unwrap();
    let l = manager.list::<u8>().unwrap();
    l.push(&1).unwrap();
    println!("{}", manager.server_pid().unwrap());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_parent_killed_with_sigkill_takes_its_server_along() {
    let _census = shared();
    bounded(LIMIT, || {
        let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "doomed_parent",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DOOMED_PARENT, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(parent.stdout.take().unwrap());
        let mut line = String::new();
        let server = loop {
            line.clear();
            if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
                break None;
            }
            // The harness prints "test doomed_parent ... " before the pid.
            if let Some(Ok(pid)) = line.split_whitespace().last().map(str::parse::<u32>) {
                break Some(pid);
            }
        };
        parent.kill().unwrap(); // SIGKILL
        parent.wait().unwrap();
        let pid = server.expect("the helper printed its server's pid");
        assert!(
            wait_until(Duration::from_secs(5), || not_running(pid)),
            "the server {pid} outlived its parent"
        );
    });
}

fn meet(
    barrier: Borrowed<BarrierProxy>,
    cond: Borrowed<ConditionProxy>,
    turn: Borrowed<ValueProxy<u32>>,
    sem: Borrowed<SemaphoreProxy>,
) {
    let index = barrier.wait_timeout(Duration::from_secs(30)).unwrap() as u32;
    // Each process waits for its turn on the condition, then passes it on.
    let held = cond.lock().unwrap();
    while turn.get().unwrap() != index {
        // Long enough that only a notify ends it in the test's time.
        held.wait_timeout(Duration::from_secs(20)).unwrap();
    }
    turn.set(&(index + 1)).unwrap();
    held.notify_all().unwrap();
    drop(held);
    sem.release().unwrap();
}

#[test]
fn barrier_condition_and_semaphore_coordinate_processes() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let barrier = manager.barrier(4).unwrap();
        let cond = manager.condition().unwrap();
        let turn = manager.value(&0u32).unwrap();
        let sem = manager.semaphore(0).unwrap();
        let mut ps: Vec<Process> = (0..4)
            .map(|_| {
                Process::new(
                    meet,
                    (
                        barrier.borrowed(),
                        cond.borrowed(),
                        turn.borrowed(),
                        sem.borrowed(),
                    ),
                )
            })
            .collect();
        let started = Instant::now();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        for _ in 0..4 {
            assert!(sem.acquire_timeout(Duration::from_secs(30)).unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "woken by notify, not by timeouts"
        );
        for p in &mut ps {
            assert_eq!(p.join(Some(Duration::from_secs(30))).unwrap(), Some(0));
        }
        assert_eq!(
            turn.get().unwrap(),
            4,
            "every turn was taken once, in order"
        );
        assert!(!sem.acquire_timeout(Duration::from_millis(10)).unwrap());
        // A lone waiter that times out breaks the barrier for the next one.
        let lone = manager.barrier(2).unwrap();
        assert!(matches!(
            lone.wait_timeout(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
        assert!(matches!(lone.wait(), Err(Error::BrokenBarrier)));
    });
}

#[test]
fn a_zeroed_proxy_is_refused_not_followed() {
    let _census = shared();
    bounded(LIMIT, || {
        let _manager = Manager::start().unwrap();
        // SAFETY: proxies are Pod, for which all-zero bytes are a valid value.
        let forged: DictProxy<u8, u8> = unsafe { std::mem::zeroed() };
        assert!(matches!(forged.len(), Err(Error::InvalidArgument(_))));
    });
}

#[test]
fn a_dict_keeps_insertion_order_and_a_list_indexes_as_python_does() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, u8>().unwrap();
        for (k, v) in [("b", 1), ("a", 2), ("b", 3)] {
            d.insert(k, &v).unwrap();
        }
        // Replacing a value keeps the key's place; removing and adding moves it last.
        assert_eq!(d.items().unwrap(), [("b".into(), 3), ("a".into(), 2)]);
        assert_eq!(d.remove("b").unwrap(), Some(3));
        d.insert("b", &4).unwrap();
        assert_eq!(d.keys().unwrap(), ["a", "b"]);
        assert!(d.contains_key("a").unwrap() && !d.contains_key("c").unwrap());

        let l = manager.list::<i32>().unwrap();
        l.extend(&[1, 2, 3]).unwrap();
        l.insert(-1, &9).unwrap(); // before the last, as list.insert(-1, 9)
        l.insert(100, &7).unwrap(); // past the end: appended
        assert_eq!(l.to_vec().unwrap(), [1, 2, 9, 3, 7]);
        assert_eq!((l.get(-2).unwrap(), l.pop_at(0).unwrap()), (3, Some(1)));
        assert!(matches!(l.get(10), Err(Error::InvalidArgument(_))));
        l.set(-1, &0).unwrap();
        assert_eq!(l.to_vec().unwrap(), [2, 9, 3, 0]);
    });
}

/// The thread count of process `pid`.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

#[test]
fn a_flood_of_silent_connections_costs_no_threads_and_a_client_is_served_at_once() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"flood")
            .start()
            .unwrap();
        let addr = server.address().unwrap();
        let pid = server.server_pid().unwrap();
        let before = threads_of(pid);
        let flood: Vec<TcpStream> = (0..1000)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect();
        assert!(flood.len() >= 900, "only {} connected", flood.len());
        // Give the server time to accept them all (it would make a thread each).
        std::thread::sleep(Duration::from_millis(300));
        let during = threads_of(pid);
        assert!(
            during <= before + 2,
            "{during} server threads with 1,000 silent peers ({before} before)"
        );
        // A client with the key is served at once meanwhile: the median of
        // five connect + call round trips is under 10 ms.
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let client = Manager::connect(addr, b"flood").unwrap();
                client.value_named("v", &1u32).unwrap().get().unwrap();
                start.elapsed()
            })
            .collect();
        times.sort();
        assert!(times[2] < Duration::from_millis(10), "{times:?}");
        // This process can still make processes and threads.
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.apply(square, (7,)).unwrap(), 49);
        drop(flood);
    });
}

fn square(x: u64) -> u64 {
    x * x
}

/// Connects to the abstract socket `name` as user `uid` from a forked child
/// (raw system calls only), and reports what happened: 0 the server closed
/// without a byte, 1 it sent a challenge, 2 no connection, 3 no answer.
fn connect_as(uid: u32, name: &str) -> i32 {
    // SAFETY: plain sockaddr_un, filled below within its size.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as u16;
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as u32;
    // SAFETY: the child makes only async-signal-safe system calls and exits
    // with `_exit`; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(4);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 || libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) != 0 {
                libc::_exit(2);
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 3000) != 1 {
                libc::_exit(3);
            }
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::_exit(if n > 0 { 1 } else { 0 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn another_user_is_refused_on_the_local_socket_before_any_handshake() {
    // SAFETY: a plain query.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot connect as another user (the check is unit-tested)");
        return;
    }
    let _census = exclusive();
    bounded(LIMIT, || {
        let before = manager_sockets();
        let manager = Manager::start().unwrap();
        let name = manager_sockets()
            .difference(&before)
            .next()
            .unwrap()
            .trim_start_matches('@')
            .to_owned();
        assert_eq!(connect_as(0, &name), 1, "root gets a challenge");
        assert_eq!(connect_as(65534, &name), 0, "nobody is closed at once");
        let d = manager.dict::<u32, u32>().unwrap();
        d.insert(&1, &1).unwrap();
    });
}

#[test]
fn a_trickled_handshake_ends_at_its_deadline() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"k")
            .handshake_timeout(Duration::from_millis(500))
            .start()
            .unwrap();
        let mut s = TcpStream::connect(server.address().unwrap()).unwrap();
        let start = Instant::now();
        read_frame(&mut s).unwrap();
        s.write_all(&64u32.to_le_bytes()).unwrap();
        let closed = loop {
            std::thread::sleep(Duration::from_millis(90));
            if s.write_all(&[0]).is_err() || start.elapsed() > Duration::from_secs(3) {
                break start.elapsed();
            }
        };
        assert!(closed_within(&mut s, Duration::from_secs(3)));
        assert!(
            closed < Duration::from_millis(900),
            "closed after {closed:?}"
        );
    });
}

#[test]
fn a_trickled_frame_is_cut_off_and_memory_follows_the_bytes_not_the_header() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"k")
            .handshake_timeout(Duration::from_millis(500))
            .start()
            .unwrap();
        let pid = server.server_pid().unwrap();
        let mut s = TcpStream::connect(server.address().unwrap()).unwrap();
        assert!(handshake(&mut s, b"k"));
        let rss = rss_of(pid);
        s.write_all(&(60u32 << 20).to_le_bytes()).unwrap();
        let start = Instant::now();
        let mut grew = 0;
        let closed = loop {
            std::thread::sleep(Duration::from_millis(100));
            grew = grew.max(rss_of(pid).saturating_sub(rss));
            if s.write_all(&[0; 16]).is_err() || start.elapsed() > Duration::from_secs(5) {
                break start.elapsed();
            }
        };
        assert!(
            closed < Duration::from_millis(1600),
            "closed after {closed:?}"
        );
        assert!(grew < 8 << 20, "the server grew by {grew} bytes");
    });
}

#[test]
fn an_enormous_handshake_timeout_saturates_instead_of_wrapping() {
    let _census = shared();
    bounded(LIMIT, || {
        // In milliseconds this is 2^64 + 384: wrapped, it would be 384 ms.
        for timeout in [Duration::from_secs(18_446_744_073_709_552), Duration::MAX] {
            let server = Manager::builder()
                .address("127.0.0.1:0")
                .authkey(b"k")
                .handshake_timeout(timeout)
                .start()
                .unwrap();
            let addr = server.address().unwrap();
            let mut silent = TcpStream::connect(addr).unwrap();
            assert!(!closed_within(&mut silent, Duration::from_secs(1)));
            let client = Manager::connect(addr, b"k").unwrap();
            assert_eq!(client.value(&3u8).unwrap().get().unwrap(), 3);
        }
    });
}

fn count_up(d: Borrowed<DictProxy<String, u64>>, v: Borrowed<ValueProxy<i64>>, n: u32) {
    for i in 0..n {
        if i % 2 == 0 {
            d.fetch_add(&"hits".to_string(), 1).unwrap();
            v.fetch_add(1).unwrap();
        } else {
            d.update(&"hits".to_string(), |old| Some(old.unwrap_or(0) + 1))
                .unwrap();
            v.update(|old| old.map(|x| x + 1)).unwrap();
        }
    }
}

#[test]
fn four_processes_adding_a_thousand_each_make_four_thousand() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, u64>().unwrap();
        let v = manager.value(&0i64).unwrap();
        let mut children: Vec<Process> = (0..4)
            .map(|_| Process::new(count_up, (d.borrowed(), v.borrowed(), 1000)))
            .collect();
        for c in &mut children {
            c.start().unwrap();
        }
        for c in &mut children {
            assert_eq!(c.join(Some(Duration::from_secs(100))).unwrap(), Some(0));
        }
        assert_eq!(d.get("hits").unwrap(), Some(4000));
        assert_eq!(v.get().unwrap(), 4000);
    });
}

#[test]
fn over_tcp_fetch_add_works_and_a_function_is_refused() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"k")
            .start()
            .unwrap();
        let client = Manager::connect(server.address().unwrap(), b"k").unwrap();
        let d = client.dict_named::<u8, i8>("d").unwrap();
        assert_eq!(d.fetch_add(&1, 100).unwrap(), 0);
        assert!(
            matches!(d.fetch_add(&1, 100), Err(Error::InvalidArgument(m)) if m.contains("overflow"))
        );
        assert_eq!(d.get(&1).unwrap(), Some(100), "an overflow changes nothing");
        assert!(matches!(
            d.update(&1, |_| Some(0)),
            Err(Error::InvalidArgument(m)) if m.contains("same executable")
        ));
        assert_eq!(d.get(&1).unwrap(), Some(100));
    });
}

#[test]
fn an_update_that_panics_changes_nothing_and_the_server_goes_on() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let v = manager.value(&5u32).unwrap();
        assert!(matches!(
            v.update(|_| panic!("no")),
            Err(Error::InvalidArgument(m)) if m.contains("panicked")
        ));
        assert_eq!(v.get().unwrap(), 5);
    });
}

#[test]
fn a_proxy_of_other_types_is_refused_before_any_value_is_read() {
    let _census = shared();
    bounded(LIMIT, || {
        let server = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(b"k")
            .start()
            .unwrap();
        let d = server.dict_named::<String, u64>("counts").unwrap();
        d.insert("a", &4000).unwrap();
        // Another program, over TCP, with other types.
        let other = Manager::connect(server.address().unwrap(), b"k").unwrap();
        assert!(matches!(
            other.dict_named::<String, i32>("counts"),
            Err(Error::Decode(m)) if m.contains("u64")
        ));
        assert!(matches!(
            other.value_named::<u64>("counts", &0),
            Err(Error::InvalidArgument(_))
        ));
        let same = other.dict_named::<String, u64>("counts").unwrap();
        assert_eq!(same.get("a").unwrap(), Some(4000));
        // The same check at every call is unit-tested (`server`): safe code
        // cannot change a proxy's types after it was made.
    });
}

#[test]
fn a_semaphore_at_its_largest_count_refuses_release_and_never_wraps() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let lock = manager.lock().unwrap();
        let _held = lock.lock().unwrap();
        let sem = manager.semaphore(u64::MAX).unwrap();
        assert!(matches!(sem.release(), Err(Error::InvalidArgument(_))));
        assert!(sem.acquire_timeout(Duration::ZERO).unwrap());
        sem.release().unwrap();
        // The connection (and the lock it holds) lives on.
        assert!(lock.try_lock().is_err(), "not re-entrant: still ours");
    });
}

#[test]
fn a_barrier_wait_that_times_out_is_a_timeout_and_breaks_it_like_the_heap_barrier() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let proxy = manager.barrier(2).unwrap();
        let heap = shmpool::Barrier::new(2).unwrap();
        assert!(matches!(
            proxy.wait_timeout(Duration::ZERO),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            heap.wait(Some(Duration::ZERO)),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            proxy.wait_timeout(Duration::ZERO),
            Err(Error::BrokenBarrier)
        ));
        assert!(matches!(
            heap.wait(Some(Duration::ZERO)),
            Err(Error::BrokenBarrier)
        ));
        let one = manager.barrier(1).unwrap();
        assert_eq!(one.wait_timeout(Duration::ZERO).unwrap(), 0);
    });
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain system call on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[test]
fn a_call_with_a_timeout_returns_by_its_deadline_from_a_stopped_server() {
    let _census = shared();
    bounded(LIMIT, || {
        let mut manager = Manager::start().unwrap();
        let pid = manager.server_pid().unwrap();
        let q = manager.queue::<u32>().unwrap();
        let lock = manager.lock().unwrap();
        let held = lock.lock().unwrap();
        q.put(&1).unwrap();
        assert_eq!(q.get().unwrap(), 1); // this thread's connection is made
        signal(pid, libc::SIGSTOP);
        let timeout = Duration::from_millis(300);
        let late = Duration::from_millis(300 + 200 + 400); // margin and slack
        let start = Instant::now();
        assert!(matches!(q.get_timeout(timeout), Err(Error::Timeout)));
        assert!(start.elapsed() < late, "{:?}", start.elapsed());
        let start = Instant::now();
        assert!(matches!(q.get_timeout(timeout), Err(Error::Timeout)));
        assert!(start.elapsed() < late, "again: {:?}", start.elapsed());
        // A new connection, from another thread, too.
        let other = lock.borrowed();
        std::thread::spawn(move || {
            let start = Instant::now();
            assert!(matches!(other.lock_timeout(timeout), Err(Error::Timeout)));
            assert!(start.elapsed() < late, "{:?}", start.elapsed());
        })
        .join()
        .unwrap();
        signal(pid, libc::SIGCONT);
        // The connection goes on, and this thread still holds its lock.
        q.put(&2).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 2);
        std::thread::spawn(move || assert!(other.try_lock().unwrap().is_none()))
            .join()
            .unwrap();
        drop(held);
        assert!(lock.try_lock().unwrap().is_some());
        // Shutting down a stopped server is bounded too.
        signal(pid, libc::SIGSTOP);
        let start = Instant::now();
        manager.shutdown().unwrap();
        assert!(start.elapsed() < Duration::from_secs(15));
        assert!(wait_until(Duration::from_secs(10), || not_running(pid)));
    });
}

/// Where the outsider helper connects (an abstract socket name).
const OUTSIDER_ENV: &str = "SHMPOOL_TEST_OUTSIDER_SOCKET";
/// The key it tries.
const OUTSIDER_KEY: &[u8] = b"a key every process of this user can read";

/// Not a test of its own: the body of the process that
/// `a_process_outside_the_program_cannot_authenticate_even_with_the_key`
/// runs (this test binary, executed again); it does nothing otherwise.
#[test]
fn helper_try_the_key_from_wherever_this_runs() {
    let Some(name) = std::env::var_os(OUTSIDER_ENV) else {
        return;
    };
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_encoded_bytes()).unwrap();
    let verdict = match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Err(_) => "no connection",
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            match try_handshake(&mut s, OUTSIDER_KEY) {
                Ok(true) => "welcomed",
                Ok(false) => "wrong key",
                Err(_) => "refused",
            }
        }
    };
    println!("OUTSIDER: {verdict}");
}

/// Runs the helper above with `env`: as a child of this process, or, with
/// `orphan`, as a grandchild whose parent exits at once (so that it descends
/// from no process of the program); what it printed.
fn run_helper(socket: &str, orphan: bool) -> String {
    use std::ffi::CString;
    let exe = CString::new(
        std::env::current_exe()
            .unwrap()
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let args = [
        exe.clone(),
        CString::new("helper_try_the_key_from_wherever_this_runs").unwrap(),
        CString::new("--exact").unwrap(),
        CString::new("--nocapture").unwrap(),
    ];
    let env = [CString::new(format!("{OUTSIDER_ENV}={socket}")).unwrap()];
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let mut fds = [0; 2];
    // SAFETY: the children make only async-signal-safe calls (fork, dup2,
    // execve, _exit) on memory prepared before the fork; the parent reads
    // the pipe until every writer is gone, bounded by `poll`.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let child = libc::fork();
        if child == 0 {
            libc::close(fds[0]);
            if orphan && libc::fork() != 0 {
                libc::_exit(0);
            }
            libc::dup2(fds[1], 1);
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        libc::close(fds[1]);
        let mut status = 0;
        assert_eq!(libc::waitpid(child, &mut status, 0), child);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut pfd = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            assert!(Instant::now() < deadline, "the helper did not finish");
            if libc::poll(&mut pfd, 1, 1000) <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fds[0]);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[test]
fn a_process_outside_the_program_cannot_authenticate_even_with_the_key() {
    let _census = exclusive();
    bounded(LIMIT, || {
        let before = manager_sockets();
        let manager = Manager::builder().authkey(OUTSIDER_KEY).start().unwrap();
        let name = manager_sockets()
            .difference(&before)
            .next()
            .unwrap()
            .trim_start_matches('@')
            .to_owned();
        let inside = run_helper(&name, false);
        assert!(inside.contains("OUTSIDER: welcomed"), "{inside}");
        let outside = run_helper(&name, true);
        assert!(outside.contains("OUTSIDER: refused"), "{outside}");
        let d = manager.dict::<u8, u8>().unwrap();
        d.insert(&1, &2).unwrap();
    });
}

/// The entries of `/proc/<pid>/fd` and `/proc/<pid>/maps` that name a
/// manager's lane.
fn lanes_of(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("shmpool-manager-lane"))
        })
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("shmpool-manager-lane"))
        .count();
    (fds, maps)
}

#[test]
fn local_calls_go_through_a_lane_no_descriptor_reaches_and_large_messages_still_pass() {
    let _census = exclusive();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let server = manager.server_pid().unwrap();
        let l = manager.list::<Vec<u8>>().unwrap();
        l.push(&vec![1; 10]).unwrap();
        // Mapped on both sides, held open by no descriptor on either.
        let me = std::process::id();
        assert_eq!(lanes_of(me), (0, 1));
        let (fds, maps) = lanes_of(server);
        assert_eq!((fds, maps > 0), (0, true));
        // Larger than a lane, both ways (on the socket).
        let big = vec![7u8; 300_000];
        l.push(&big).unwrap();
        let all = l.to_vec().unwrap();
        assert_eq!((all.len(), &all[1]), (2, &big));
        assert_eq!(l.get(0).unwrap(), vec![1; 10]);
    });
}

#[test]
fn a_call_to_a_server_that_died_fails_at_once() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pid = manager.server_pid().unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        d.insert(&1, &1).unwrap();
        signal(pid, libc::SIGKILL);
        assert!(wait_until(Duration::from_secs(10), || not_running(pid)));
        let start = Instant::now();
        assert!(matches!(d.insert(&2, &2), Err(Error::PeersGone)));
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(d.len(), Err(Error::PeersGone)));
    });
}

#[test]
fn forty_threads_of_one_process_connecting_at_once_all_get_in() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u32, u32>().unwrap();
        let start = std::sync::Barrier::new(40);
        std::thread::scope(|s| {
            for i in 0..40 {
                let (start, d) = (&start, &d);
                s.spawn(move || {
                    start.wait();
                    d.insert(&i, &i).unwrap();
                });
            }
        });
        assert_eq!(d.len().unwrap(), 40);
    });
}

/// Waits (bounded) until the server holds `n` objects; the count it saw.
fn objects_become(manager: &Manager, n: usize) -> usize {
    let mut seen = usize::MAX;
    wait_until(Duration::from_secs(10), || {
        seen = manager.object_count().unwrap();
        seen == n
    });
    seen
}

#[test]
fn an_object_is_freed_when_its_last_proxy_drops_and_its_borrowed_form_then_says_so() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        assert_eq!(manager.object_count().unwrap(), 0);
        let d = manager.dict::<u8, u8>().unwrap();
        d.insert(&1, &2).unwrap();
        let e = d.clone();
        let travelling = d.borrowed();
        assert_eq!(manager.object_count().unwrap(), 1);
        drop(d);
        assert_eq!(manager.object_count().unwrap(), 1, "the clone holds it");
        assert_eq!(travelling.get(&1).unwrap(), Some(2));
        drop(e);
        assert_eq!(
            manager.object_count().unwrap(),
            0,
            "freed with its last proxy"
        );
        // Its borrowed form is told, clearly, and reaches no other object.
        let _other = manager.dict::<u8, u8>().unwrap();
        assert!(
            matches!(travelling.get(&1), Err(Error::InvalidArgument(m)) if m.contains("freed"))
        );
        assert!(
            matches!(travelling.to_proxy(), Err(Error::InvalidArgument(m)) if m.contains("freed"))
        );
        // A call waiting in an object when it is freed ends.
        let q = manager.queue::<u8>().unwrap();
        let b = q.borrowed();
        let waiting = std::thread::spawn(move || b.get_timeout(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(200));
        let dropped = Instant::now();
        drop(q);
        assert!(
            matches!(waiting.join().unwrap(), Err(Error::InvalidArgument(m)) if m.contains("freed"))
        );
        assert!(dropped.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn objects_made_by_name_survive_their_proxies() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let jobs = manager.queue_named::<u32>("jobs").unwrap();
        jobs.put(&7).unwrap();
        let again = jobs.clone();
        drop((jobs, again));
        let v = manager.value_named("v", &1u8).unwrap();
        drop(v);
        assert_eq!(manager.object_count().unwrap(), 2);
        assert_eq!(
            manager.queue_named::<u32>("jobs").unwrap().get().unwrap(),
            7
        );
        assert_eq!(manager.value_named("v", &0u8).unwrap().get().unwrap(), 1);
    });
}

fn hold_references_until_killed(d: Borrowed<DictProxy<u32, u32>>, ready: Borrowed<EventProxy>) {
    let mine = d.to_proxy().unwrap();
    let mut clones: Vec<_> = (0..5).map(|_| mine.clone()).collect();
    // One taken by a thread that then ends: it stays the process's.
    clones.push(
        std::thread::spawn(move || d.to_proxy().unwrap())
            .join()
            .unwrap(),
    );
    mine.insert(&1, &1).unwrap();
    ready.set().unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop((mine, clones));
}

#[test]
fn a_client_killed_with_sigkill_holding_references_leaks_none_of_them() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u32, u32>().unwrap();
        let ready = manager.event().unwrap();
        let mut p = Process::new(
            hold_references_until_killed,
            (d.borrowed(), ready.borrowed()),
        );
        p.start().unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)).unwrap());
        let travelling = d.borrowed();
        drop(d);
        assert_eq!(
            manager.object_count().unwrap(),
            2,
            "the child holds the dict"
        );
        assert_eq!(travelling.len().unwrap(), 1);
        p.kill();
        p.join(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(
            objects_become(&manager, 1),
            1,
            "the killed child's references went"
        );
        assert!(matches!(travelling.len(), Err(Error::InvalidArgument(_))));
    });
}

fn clone_and_drop(d: Borrowed<DictProxy<u32, u32>>, who: u32) {
    let mine = d.to_proxy().unwrap();
    let copies: Vec<_> = (0..50).map(|_| mine.clone()).collect();
    mine.insert(&who, &who).unwrap();
    drop(copies);
    if who % 2 == 0 {
        // Exits holding one more: its exit gives it back.
        std::mem::forget(mine.clone());
    }
}

fn clone_in_task(d: Borrowed<DictProxy<u32, u32>>, i: u32) -> u32 {
    let mine = d.to_proxy().unwrap();
    let copy = mine.clone();
    copy.insert(&(100 + i), &i).unwrap();
    i
}

#[test]
fn clones_and_drops_in_other_processes_and_tasks_count_right() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u32, u32>().unwrap();
        let mut children: Vec<Process> = (0..4)
            .map(|who| Process::new(clone_and_drop, (d.borrowed(), who)))
            .collect();
        children.iter_mut().for_each(|c| c.start().unwrap());
        for c in &mut children {
            assert_eq!(c.join(Some(Duration::from_secs(60))).unwrap(), Some(0));
        }
        let pool = Pool::new(2).unwrap();
        let args: Vec<_> = (0..20).map(|i| (d.borrowed(), i)).collect();
        assert_eq!(pool.starmap(clone_in_task, &args).unwrap().len(), 20);
        assert_eq!(d.len().unwrap(), 24);
        assert_eq!(manager.object_count().unwrap(), 1);
        drop(d);
        // Freed once the children's sessions are gone (an exited child's
        // connections close at once; the pool's workers still hold theirs,
        // with nothing counted in them).
        assert_eq!(objects_become(&manager, 0), 0);
    });
}

#[test]
fn a_proxy_outlives_the_thread_that_made_it() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        // This thread never connected: when the maker's connection closes,
        // the process holds the dict alone.
        let d =
            std::thread::scope(|s| s.spawn(|| manager.dict::<u8, u8>().unwrap()).join()).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the server sees it close
        d.insert(&1, &1).unwrap();
        assert_eq!(manager.object_count().unwrap(), 1);
        drop(d);
        assert_eq!(manager.object_count().unwrap(), 0);
    });
}

fn fork_then_hold(
    d: Borrowed<DictProxy<u32, u32>>,
    ready: Borrowed<EventProxy>,
    grandchild: Borrowed<ValueProxy<i32>>,
) {
    let mine = d.to_proxy().unwrap();
    let _copies: Vec<_> = (0..3).map(|_| mine.clone()).collect();
    // SAFETY: the child only sleeps and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Holds copies of this process's connection descriptors.
        std::thread::sleep(Duration::from_secs(600));
        // SAFETY: leaves the forked copy without running anything else.
        unsafe { libc::_exit(0) };
    }
    grandchild.set(&pid).unwrap();
    ready.set().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_clients_references_go_even_while_its_forked_child_holds_its_connection() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u32, u32>().unwrap();
        let ready = manager.event().unwrap();
        let grandchild = manager.value(&0i32).unwrap();
        let args = (d.borrowed(), ready.borrowed(), grandchild.borrowed());
        let mut p = Process::new(fork_then_hold, args);
        p.start().unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)).unwrap());
        let g = grandchild.get().unwrap();
        assert!(g > 0);
        drop(d);
        assert_eq!(
            manager.object_count().unwrap(),
            3,
            "the child holds the dict"
        );
        p.kill();
        p.join(Some(Duration::from_secs(10))).unwrap();
        let left = objects_become(&manager, 2);
        // SAFETY: a plain signal to the grandchild this test made.
        unsafe { libc::kill(g, libc::SIGKILL) };
        assert_eq!(left, 2, "the killed child's references went");
    });
}

/// A batch job's task: counts a file's words into the shared dict.
fn count_words(d: Borrowed<DictProxy<String, u64>>, path: String) -> usize {
    let text = std::fs::read_to_string(&path).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    for w in &words {
        d.fetch_add(*w, 1).unwrap();
    }
    d.fetch_add("total", words.len() as u64).unwrap();
    words.len()
}

#[test]
fn a_serde_map_over_file_names_counts_into_a_borrowed_dict_with_every_start_method() {
    let _census = shared();
    bounded(LIMIT, || {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("manager-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // File i: "apple" i times and "pear" 2i + 1 times.
        let names: Vec<String> = (0..6)
            .map(|i| {
                let path = dir.join(format!("{i}.txt"));
                let text = "apple ".repeat(i) + &"pear\n".repeat(2 * i + 1);
                std::fs::write(&path, text).unwrap();
                path.to_str().unwrap().to_owned()
            })
            .collect();
        let expected: Vec<usize> = (0..6).map(|i| 3 * i + 1).collect();
        for method in [StartMethod::Fork, StartMethod::Spawn] {
            let manager = Manager::start().unwrap();
            let d = manager.dict::<String, u64>().unwrap();
            let pool = Pool::builder()
                .processes(2)
                .start_method(method)
                .build()
                .unwrap();
            let counts = pool
                .serde()
                .map(shmpool::partial(count_words, d.borrowed()), &names)
                .unwrap();
            assert_eq!(counts, expected, "{method}");
            // And as an argument of its own.
            let one = pool
                .serde()
                .apply(count_words, (d.borrowed(), names[5].clone()))
                .unwrap();
            assert_eq!(one, 16, "{method}");
            assert_eq!(d.get("apple").unwrap(), Some(15 + 5), "{method}");
            assert_eq!(d.get("pear").unwrap(), Some(36 + 11), "{method}");
            assert_eq!(d.get("total").unwrap(), Some(51 + 16), "{method}");
            assert_eq!(d.len().unwrap(), 3, "{method}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn a_str_key_encodes_as_its_string_and_finds_the_same_entry() {
    let _census = shared();
    // The server compares encoded keys: the borrowed form must encode as
    // the owned one.
    assert_eq!(
        postcard::to_allocvec("total").unwrap(),
        postcard::to_allocvec(&"total".to_string()).unwrap()
    );
    assert_eq!(
        postcard::to_allocvec(&[1u16, 300][..]).unwrap(),
        postcard::to_allocvec(&vec![1u16, 300]).unwrap()
    );
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, u64>().unwrap();
        assert_eq!(d.insert("total", &1).unwrap(), None);
        assert_eq!(d.insert(&"total".to_string(), &2).unwrap(), Some(1));
        assert_eq!(d.get("total").unwrap(), Some(2));
        assert!(d.contains_key("total").unwrap());
        assert_eq!(d.fetch_add("total", 3).unwrap(), 2);
        assert_eq!(d.update("total", |v| v.map(|v| v * 10)).unwrap(), Some(50));
        assert_eq!(d.keys().unwrap(), ["total"]);
        assert_eq!(d.remove("total").unwrap(), Some(50));
        assert!(d.is_empty().unwrap());

        let v = manager.dict::<Vec<u16>, u8>().unwrap();
        v.insert(&vec![1, 300], &7).unwrap();
        assert_eq!(v.get(&[1u16, 300][..]).unwrap(), Some(7));
    });
}

/// The fields of a `Borrowed`'s serde form, in order: endpoint, nonce, id,
/// types, counted.
type Fields = (u64, u64, u64, u64, u64);

#[test]
fn a_borrowed_proxy_decodes_only_as_its_own_type_in_its_own_program() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, u64>().unwrap();
        d.insert("a", &1).unwrap();
        let bytes = postcard::to_allocvec(&d.borrowed()).unwrap();
        let back: Borrowed<DictProxy<String, u64>> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.get("a").unwrap(), Some(1));

        let refused = |fields: Fields| {
            let bytes = postcard::to_allocvec(&fields).unwrap();
            postcard::from_bytes::<Borrowed<DictProxy<String, u64>>>(&bytes)
                .expect_err("a forged proxy decoded")
        };
        let good: Fields = postcard::from_bytes(&bytes).unwrap();
        // A record of another program's heap at the same offset has another nonce.
        let (e, nonce, id, types, counted) = good;
        refused((e, nonce ^ 1, id, types, counted));
        refused((e + 64, nonce, id, types, counted));
        refused((0, 0, 0, 0, 0));
        refused((e, nonce, id, types ^ 1, counted));
        refused((e, nonce, id, types, 2));
        // Decoded as a proxy of other types.
        assert!(postcard::from_bytes::<Borrowed<DictProxy<String, i64>>>(&bytes).is_err());
        assert!(postcard::from_bytes::<Borrowed<QueueProxy<u64>>>(&bytes).is_err());

        // A zeroed `Borrowed` names no manager: it does not encode.
        // SAFETY: proxies are Pod, for which all-zero bytes are a valid value.
        let forged: Borrowed<DictProxy<String, u64>> = unsafe { std::mem::zeroed() };
        assert!(postcard::to_allocvec(&forged).is_err());
    });
}

/// Sends its borrowed dict back through a manager queue, as a serde value.
fn send_back(
    d: Borrowed<DictProxy<String, u64>>,
    q: Borrowed<QueueProxy<Borrowed<DictProxy<String, u64>>>>,
) {
    d.insert("child", &1).unwrap();
    q.put(&d).unwrap();
}

#[test]
fn a_borrowed_proxy_travels_through_a_manager_queue_and_still_works() {
    let _census = shared();
    bounded(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<String, u64>().unwrap();
        let q = manager.queue::<Borrowed<DictProxy<String, u64>>>().unwrap();
        let mut p = Process::new(send_back, (d.borrowed(), q.borrowed()));
        p.start().unwrap();
        assert_eq!(p.join(Some(Duration::from_secs(30))).unwrap(), Some(0));
        let back = q.get_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(back.get("child").unwrap(), Some(1));
        assert_eq!(back.len().unwrap(), 1);
    });
}
