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

use std::path::Path;

use support::envoy::assert_validates;
use support::paths::repo_root;

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
    // `--mode validate` loads the module and runs its configuration (a configuration the
    // filter refuses fails validation), binds no port and exits on its own.
    assert_validates(&root, Path::new(BOOTSTRAP));
}
