//! The plain-Envoy bootstrap shipped in `envoy/envoy.yaml`: the real Envoy
//! accepts it as it is (run from the repository root, where its relative
//! module path `dist/oob_mirror.wasm` points). That the filter accepts the
//! plugin configuration embedded in it is checked in `manifests_config.rs`,
//! with the Istio manifests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Stdio};

use support::envoy::critical_wasm_lines;
use support::paths::{envoy_bin, repo_root};

/// The bootstrap, relative to the repository root.
const BOOTSTRAP: &str = "envoy/envoy.yaml";
/// The module path written in the bootstrap, relative to the repository root.
const MODULE: &str = "dist/oob_mirror.wasm";

#[test]
fn envoy_validates_the_shipped_bootstrap() {
    let root = repo_root();
    let module = root.join(MODULE);
    assert!(
        module.is_file(),
        "{} is missing: build it with `make wasm` (the bootstrap loads it from there)",
        module.display()
    );
    let bin = envoy_bin();
    // `--mode validate` loads the module and runs its configuration (a
    // configuration the filter refuses fails validation), binds no port and
    // exits on its own.
    let out = Command::new(&bin)
        .current_dir(&root)
        .args(["--mode", "validate", "-c", BOOTSTRAP, "-l", "info"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "envoy --mode validate -c {BOOTSTRAP} failed ({}); its output:\n{log}",
        out.status
    );
    assert!(
        log.contains(&format!("configuration '{BOOTSTRAP}' OK")),
        "no `configuration ... OK` line; Envoy's output:\n{log}"
    );
    let critical = critical_wasm_lines(&log);
    assert!(
        critical.is_empty(),
        "critical wasm lines while validating:\n{}\nfull output:\n{log}",
        critical.join("\n")
    );
}
