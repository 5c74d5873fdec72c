//! The plain-Envoy bootstraps shipped in `envoy/`: the real Envoy accepts
//! `envoy.yaml` as it is, and `envoy-tls.yaml` with its CA file path pointed at
//! a CA made here and the node's token in its environment (run from the
//! repository root, where their relative module path `dist/oob_mirror.wasm`
//! points). That the filter accepts the plugin configuration embedded in each
//! is checked in `manifests_config.rs`, with the Istio manifests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use support::envoy::{assert_validates, assert_validates_with_env, validate};
use support::paths::{repo_root, TempDir};
use support::pki::Ca;

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

/// The TLS bootstrap, relative to the repository root.
const TLS_BOOTSTRAP: &str = "envoy/envoy-tls.yaml";
/// The CA file it trusts: an operator's path, absent here.
const TLS_CA_PATH: &str = "/etc/oob-mirror/node-ca.pem";
/// The variable its `node.headers` read, handed to the VM by `host_env_keys`.
const TOKEN_VAR: &str = "OOB_MIRROR_NODE_TOKEN";

#[test]
fn envoy_validates_the_tls_bootstrap_given_its_ca_and_token() {
    let root = repo_root();
    assert!(
        root.join(MODULE).is_file(),
        "{MODULE} is missing: build it with `make wasm` (the bootstrap loads it from there)"
    );
    let text = std::fs::read_to_string(root.join(TLS_BOOTSTRAP)).unwrap();
    assert_eq!(
        text.matches(TLS_CA_PATH).count(),
        1,
        "{TLS_BOOTSTRAP}: expected the CA path {TLS_CA_PATH} once"
    );
    let dir = TempDir::new("tls-bootstrap");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, Ca::new("oob-mirror test CA").pem()).unwrap();
    let bootstrap = dir.path().join("envoy-tls.yaml");
    std::fs::write(&bootstrap, text.replace(TLS_CA_PATH, ca.to_str().unwrap())).unwrap();

    // `--mode validate` builds the clusters (loading the CA file), loads the module and runs
    // its configuration, which reads the token from the VM environment.
    let log = assert_validates_with_env(
        &root,
        &bootstrap,
        &[(TOKEN_VAR, "Bearer t0ken-4-validation")],
    );
    assert!(
        !log.contains("t0ken-4-validation"),
        "the token is in Envoy's output:\n{log}"
    );

    // Without the token the filter refuses its configuration, naming the variable: the
    // bootstrap does hand Envoy's environment to the VM.
    let (status, log) = validate(&root, &bootstrap, &[(TOKEN_VAR, None)]);
    assert!(
        !status.success() && log.contains(TOKEN_VAR),
        "validated without {TOKEN_VAR} ({status}):\n{log}"
    );
}
