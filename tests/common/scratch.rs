//! Programs built against this crate in a scratch project, as a user's
//! would be: for what the compiler says (`compile_fail.rs`) and for the
//! README's programs (`readme.rs`). Every project shares one target
//! directory, so only the first build of a feature set builds shmpool.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile_fail")
}

/// Builds `main_rs` as program `name` depending on this crate with
/// `features` on; returns whether the build succeeded, and the compiler's
/// output.
pub fn build_with(name: &str, features: &[&str], main_rs: &str) -> (bool, String) {
    let project = root().join(name);
    std::fs::create_dir_all(project.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nshmpool = {{ path = {:?}, features = {:?} }}\n\n[workspace]\n",
        env!("CARGO_MANIFEST_DIR"),
        features
    );
    std::fs::write(project.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(project.join("src/main.rs"), main_rs).unwrap();
    // Reuse this crate's lock file, so the scratch project resolves the same
    // versions offline.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, project.join("Cargo.lock")).unwrap();
    }
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--offline", "--color", "never"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", root().join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The executable [`build_with`] made for program `name`.
pub fn program(name: &str) -> PathBuf {
    root().join("target/debug").join(name)
}
