//! Named shared memory and its tracker, in a running program (the crash case
//! is in `parent_death.rs`).

use shmpool::{Error, Pool, SharedMemory};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn path(shm: &SharedMemory) -> String {
    format!("/dev/shm{}", shm.name())
}

#[test]
fn the_creator_owns_the_name_and_removes_it_on_drop() {
    let mut shm = SharedMemory::create(10_000).unwrap();
    let p = path(&shm);
    assert!(shm
        .name()
        .starts_with(&format!("/shmpool-{}-", std::process::id())));
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(shm.as_slice().iter().all(|&b| b == 0));
    shm.as_mut_slice()[9_999] = 7;
    {
        let reader = SharedMemory::open(shm.name()).unwrap();
        assert_eq!(reader.len(), 10_000);
        assert_eq!(reader.as_slice()[9_999], 7);
    } // a reader's drop leaves the name alone
    assert!(Path::new(&p).exists());
    drop(shm);
    assert!(!Path::new(&p).exists());
}

#[test]
fn names_are_unique_and_bad_input_is_an_error() {
    let a = SharedMemory::create(1).unwrap();
    let b = SharedMemory::create(1).unwrap();
    assert_ne!(a.name(), b.name());
    assert!(matches!(
        SharedMemory::create(0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        SharedMemory::open("/shmpool-does-not-exist"),
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
    ));
    let mut c = SharedMemory::create(8).unwrap();
    let p = path(&c);
    c.unlink().unwrap();
    assert!(!Path::new(&p).exists());
    c.as_mut_slice()[0] = 1; // still mapped
    assert!(c.unlink().is_err(), "already unlinked");
}

fn read_shared(byte: u64) -> u8 {
    // Opens the object by name inside a worker: the name is the handle.
    let name = format!("/shmpool-{}-{}", std::process::id(), byte);
    SharedMemory::open(&name).map_or(0, |s| s.as_slice()[0])
}

fn first_byte_of(name: [u8; 64]) -> u8 {
    let name = String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_owned();
    SharedMemory::open(&name).unwrap().as_slice()[0]
}

#[test]
fn workers_open_an_object_by_name() {
    let mut shm = SharedMemory::create(4096).unwrap();
    shm.as_mut_slice()[0] = 99;
    let mut name = [0u8; 64];
    name[..shm.name().len()].copy_from_slice(shm.name().as_bytes());
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(first_byte_of, (name,)).unwrap(), 99);
    assert_eq!(
        pool.apply(read_shared, (u64::MAX,)).unwrap(),
        0,
        "no such name"
    );
}
