//! Where the harness finds Envoy and the filter module, and per-test temp dirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Root of the `oob-mirror` crate (the repository root).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY_BIN` (`make test` sets it), else `make setup`'s default
/// `<repo>/.envoy/1.40.0/bin/envoy`.
/// Panics (fails the test) with a clear message when it is missing.
pub fn envoy_bin() -> PathBuf {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".envoy/1.40.0/bin/envoy"),
    };
    if !path.is_file() {
        panic!(
            "Envoy binary not found at {}: run the tests with `make test` \
             (`make test ENVOY_VERSION=…` for another version), or set ENVOY_BIN",
            path.display()
        );
    }
    path
}

/// The filter module: `$OOB_MIRROR_WASM`, else `<repo>/dist/oob_mirror.wasm`,
/// as an absolute path. Panics (fails the test) when it is missing.
pub fn wasm_module() -> PathBuf {
    let path = match std::env::var_os("OOB_MIRROR_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("dist/oob_mirror.wasm"),
    };
    if !path.is_file() {
        panic!(
            "oob-mirror module not found at {}: set OOB_MIRROR_WASM, or build it with \
             `make wasm` (cargo build --release --target wasm32-wasip1 --lib, copied to dist/)",
            path.display()
        );
    }
    absolute(&path)
}

/// The test-only trap build of the module (`make wasm-trap`, feature `test-trap`):
/// `$OOB_MIRROR_TRAP_WASM`, else `<repo>/dist/oob_mirror_trap.wasm`. Panics (fails the
/// test) when it is missing.
pub fn trap_wasm_module() -> PathBuf {
    let path = match std::env::var_os("OOB_MIRROR_TRAP_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("dist/oob_mirror_trap.wasm"),
    };
    if !path.is_file() {
        panic!(
            "oob-mirror trap module not found at {}: set OOB_MIRROR_TRAP_WASM, or build it \
             with `make wasm-trap`",
            path.display()
        );
    }
    absolute(&path)
}

/// The dynamic module (`make dynmod`): `$OOB_MIRROR_DYNMOD`, else
/// `<repo>/dist/liboob_mirror.so`, as an absolute path. Panics (fails the test) when it is
/// missing.
pub fn dynmod_module() -> PathBuf {
    let path = match std::env::var_os("OOB_MIRROR_DYNMOD") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("dist/liboob_mirror.so"),
    };
    if !path.is_file() {
        panic!(
            "oob-mirror dynamic module not found at {}: set OOB_MIRROR_DYNMOD, or build it \
             with `make dynmod`",
            path.display()
        );
    }
    absolute(&path)
}

/// The test-only panic build of the dynamic module (`make dynmod-trap`, features
/// `dynmod,test-trap`): `$OOB_MIRROR_DYNMOD_TRAP`, else `<repo>/dist/liboob_mirror_trap.so`.
/// Panics (fails the test) when it is missing.
pub fn dynmod_trap_module() -> PathBuf {
    let path = match std::env::var_os("OOB_MIRROR_DYNMOD_TRAP") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("dist/liboob_mirror_trap.so"),
    };
    if !path.is_file() {
        panic!(
            "oob-mirror dynamic module trap build not found at {}: set OOB_MIRROR_DYNMOD_TRAP, \
             or build it with `make dynmod-trap`",
            path.display()
        );
    }
    absolute(&path)
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
}

/// A fresh directory for one test's files. Removed on drop, except when the
/// test is failing (kept for post-mortem; its path is printed).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "oob-mirror-e2e-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept test files in {})", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
