//! `libshmpool.a` and `libshmpool.so`: the C API of `shmpool`
//! (`shmpool::capi`, declared in `include/shmpool.h`), built as C libraries.
//!
//! ```sh
//! cargo build --release -p shmpool-capi
//! cc -o map examples/c/map.c -Iinclude target/release/libshmpool.a -lpthread -ldl -lm
//! ```

pub use shmpool_rs::capi::*;
