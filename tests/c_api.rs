//! The C API: the checked-in header is what cbindgen generates, and the C
//! example compiles with the system `cc` against the built library, runs, and
//! prints what it should. Every run is bounded (the first C test's bound
//! includes building the C libraries).

mod common;

use common::bounded;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn generated_header() -> String {
    let config = cbindgen::Config::from_file(Path::new(ROOT).join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(Path::new(ROOT).join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let path = Path::new(ROOT).join("include/shmpool.h");
    let generated = generated_header();
    if std::env::var_os("SHMPOOL_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/shmpool.h is stale: run `SHMPOOL_WRITE_HEADER=1 cargo test --test c_api`"
    );
}

/// Where the C programs of these tests are written.
fn profile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The directory holding `libshmpool.a` and `libshmpool.so`, built once for
/// these tests from the `shmpool-capi` package, as a C user builds them, in
/// a target directory of their own (this test's is locked by the cargo that
/// runs it).
fn c_libraries() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let target = profile_dir().join("capi");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--offline", "-p", "shmpool-capi"])
            .current_dir(ROOT)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p shmpool-capi: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug")
    })
}

/// Compiles `examples/c/map.c` against the static library into the target
/// directory; returns the program's path.
fn build_c_example() -> PathBuf {
    let exe = profile_dir().join("c_map_example");
    let lib = c_libraries().join("libshmpool.a");
    compile_c_example(&exe, &[lib.into_os_string()]);
    exe
}

/// Compiles `examples/c/map.c` against `libshmpool.so`; returns the program
/// and the library's directory, which the program must be run with in
/// `LD_LIBRARY_PATH`.
fn build_c_example_against_the_shared_library() -> (PathBuf, PathBuf) {
    let dir = c_libraries().to_path_buf();
    let exe = profile_dir().join("c_map_example_shared");
    compile_c_example(
        &exe,
        &[format!("-L{}", dir.display()).into(), "-lshmpool".into()],
    );
    (exe, dir)
}

fn compile_c_example(exe: &Path, library: &[std::ffi::OsString]) {
    let status = Command::new("cc")
        .arg("-std=c99")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-o")
        .arg(exe)
        .arg(Path::new(ROOT).join("examples/c/map.c"))
        .arg("-I")
        .arg(Path::new(ROOT).join("include"))
        .args(library)
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s"])
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed");
}

#[test]
fn with_the_shared_library_fork_works_and_spawn_says_to_link_statically() {
    bounded(Duration::from_secs(600), || {
        let (exe, lib_dir) = build_c_example_against_the_shared_library();
        let run = |method: &str| {
            let out = Command::new(&exe)
                .env("LD_LIBRARY_PATH", &lib_dir)
                .env("SHMPOOL_C_EXAMPLE_START", method)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(run("fork").contains("map: ok"), "{}", run("fork"));
        for method in ["forkserver", "spawn"] {
            let stdout = run(method);
            assert!(
                stdout.contains("shmpool must be linked into the executable (libshmpool.a)"),
                "{method}: {stdout}"
            );
        }
    });
}

#[test]
fn the_c_example_maps_survives_a_crash_and_prints_its_results() {
    bounded(Duration::from_secs(600), || {
        let exe = build_c_example();
        for method in ["fork", "forkserver", "spawn"] {
            let out = Command::new(&exe)
                .env("SHMPOOL_C_EXAMPLE_START", method)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{method}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                stdout,
                "2 processes\n\
                 map: ok, out[3] = 9.5, out[999999] = 999998000001.5\n\
                 map_f64: ok, out[7] = 3.5\n\
                 apply: ok, 1728\n\
                 crash: SHMPOOL_WORKER_DIED\n\
                 after the crash: ok, out[9] = 4.5\n\
                 a NULL function: SHMPOOL_INVALID\n",
                "{method}"
            );
        }
    });
}

unsafe extern "C" fn copy_byte(
    input: *const std::ffi::c_void,
    output: *mut std::ffi::c_void,
    _ctx: *const std::ffi::c_void,
) {
    // SAFETY: shmpool_map hands one readable input byte and one writable output byte.
    unsafe { *output.cast::<u8>() = *input.cast::<u8>() };
}

/// `shmpool_map` over `n` elements of `size` bytes, reading and writing
/// 64-byte arrays followed by guard bytes: the status, and whether the guard
/// bytes after `out` are untouched.
fn map_with_impossible_length(zero_copy: bool, n: usize, size: usize) -> (i32, String, bool) {
    use shmpool::capi::*;
    let mut options = shmpool_options_default();
    options.processes = 2;
    options.zero_copy = zero_copy as i32;
    // SAFETY: valid options.
    let pool = unsafe { shmpool_pool_new(&options) };
    assert!(!pool.is_null());
    let input = vec![7u8; 64 + 4096];
    let mut output = vec![0xAAu8; 64 + 4096];
    // SAFETY: a live pool and a function of this program; the lengths are
    // deliberately impossible: the call must refuse them before touching
    // either array.
    let rc = unsafe {
        shmpool_map(
            pool,
            Some(copy_byte),
            input.as_ptr().cast(),
            size,
            output.as_mut_ptr().cast(),
            size,
            n,
            0,
            std::ptr::null(),
            0,
        )
    };
    // SAFETY: the thread's last-error string, valid until its next call.
    let message = unsafe { std::ffi::CStr::from_ptr(shmpool_last_error()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: made above, freed once.
    unsafe { shmpool_pool_free(pool) };
    (rc, message, output.iter().all(|&b| b == 0xAA))
}

#[test]
fn shmpool_map_refuses_a_context_length_no_object_can_have() {
    use shmpool::capi::*;
    bounded(Duration::from_secs(60), || {
        let mut options = shmpool_options_default();
        options.processes = 1;
        // SAFETY: valid options.
        let pool = unsafe { shmpool_pool_new(&options) };
        assert!(!pool.is_null());
        let (input, mut output, k) = ([1u8; 4], [0u8; 4], 7u64);
        for ctx_len in [usize::MAX, isize::MAX as usize + 1] {
            // SAFETY: a live pool, arrays of 4 bytes, a function of this
            // program; `ctx_len` is impossible, and must be refused before
            // `ctx` is read.
            let rc = unsafe {
                shmpool_map(
                    pool,
                    Some(copy_byte),
                    input.as_ptr().cast(),
                    1,
                    output.as_mut_ptr().cast(),
                    1,
                    4,
                    0,
                    (&k as *const u64).cast(),
                    ctx_len,
                )
            };
            // SAFETY: the thread's last-error string, valid until its next call.
            let message = unsafe { std::ffi::CStr::from_ptr(shmpool_last_error()) }
                .to_string_lossy()
                .into_owned();
            assert_eq!(rc, SHMPOOL_INVALID, "{ctx_len}: {message}");
            assert!(message.contains("ctx_len"), "{message}");
        }
        assert_eq!(output, [0; 4]);
        // SAFETY: made above, freed once.
        unsafe { shmpool_pool_free(pool) };
    });
}

#[test]
fn shmpool_map_refuses_lengths_no_array_can_have_on_both_paths() {
    bounded(Duration::from_secs(60), || {
        let cases = [
            (usize::MAX, 1),              // SIZE_MAX one-byte elements
            (usize::MAX / 2 + 2, 2),      // n * size wraps around to 2
            (usize::MAX / 4 + 1, 4),      // n * size wraps around to 0
            (isize::MAX as usize + 1, 1), // no overflow, but larger than any allocation
        ];
        for zero_copy in [true, false] {
            for (n, size) in cases {
                let (rc, message, untouched) = map_with_impossible_length(zero_copy, n, size);
                assert_eq!(
                    rc,
                    shmpool::capi::SHMPOOL_INVALID,
                    "zero_copy {zero_copy}, n {n}, size {size}: {message}"
                );
                assert!(message.contains("too large"), "{message}");
                assert!(untouched, "zero_copy {zero_copy}, n {n}: wrote into out");
            }
        }
    });
}
