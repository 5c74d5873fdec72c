//! The module as a Wasm OCI image (`make oci`, `make push`: tools/oci_image.py),
//! checked against a real registry with the same client `make push` uses.
//!
//! What Istio checks: for an `oci://` URL, `pkg/wasm/cache.go` compares a
//! WasmPlugin's `sha256` with the digest `ImageFetcher.PrepareFetch`
//! (`pkg/wasm/imagefetcher.go`) returns, `img.Digest()` of the pulled image,
//! i.e. the sha256 of the image manifest's bytes, not of the module. Only
//! `http(s)://` URLs are checked against the module's own sha256.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::oci::{require_tool, run_ok, Registry};
use support::paths::{repo_root, wasm_module, TempDir};
use support::raw_http;

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const MEDIA_WASM_CONTENT: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const REPOSITORY: &str = "oob-mirror";

fn sha256_digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn tool_script() -> PathBuf {
    repo_root().join("tools/oci_image.py")
}

/// `python3 tools/oci_image.py build WASM OUT`.
fn build_layout(wasm: &Path, out: &Path, scratch: &Path, label: &str) {
    let python = require_tool("python3", "python3");
    let mut command = Command::new(python);
    command.arg(tool_script()).arg("build").arg(wasm).arg(out);
    run_ok(command, scratch, label);
}

/// `digests.txt`: (variant, digest) in file order.
fn read_digests(layout: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(layout.join("digests.txt")).expect("read digests.txt");
    text.lines()
        .map(|line| {
            let (name, digest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("digests.txt line {line:?} is not `NAME DIGEST`"));
            (name.to_string(), digest.to_string())
        })
        .collect()
}

fn digest_of(digests: &[(String, String)], variant: &str) -> String {
    digests
        .iter()
        .find(|(name, _)| name == variant)
        .map(|(_, digest)| digest.clone())
        .unwrap_or_else(|| panic!("no {variant} line in digests.txt: {digests:?}"))
}

/// Every file under `dir`, by relative path.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                files.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

fn parse_json(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{what} is not JSON ({e})"))
}

#[test]
fn layout_is_reproducible_and_content_addressed() {
    let wasm_path = wasm_module();
    let wasm = std::fs::read(&wasm_path).expect("read the module");
    let tmp = TempDir::new("oci-layout");

    // The second build reads a copy under another name and path, with another
    // mtime: none of these may reach the image.
    let copy = tmp.path().join("elsewhere/other-name.wasm");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    std::fs::write(&copy, &wasm).expect("write copy");
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)))
        .expect("set mtime of the copy");

    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    build_layout(&wasm_path, &first, tmp.path(), "build-first");
    build_layout(&copy, &second, tmp.path(), "build-second");

    let first_files = files_under(&first);
    let hashed = |files: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, String> {
        files
            .iter()
            .map(|(path, data)| (path.clone(), sha256_digest(data)))
            .collect()
    };
    assert_eq!(
        hashed(&first_files),
        hashed(&files_under(&second)),
        "two builds of the same module differ (file: sha256 of its content)"
    );

    let digests = read_digests(&first);
    let names: Vec<&str> = digests.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["oci", "compat"], "digests.txt variants");
    for (name, digest) in &digests {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        assert!(
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{name}: {digest:?} is not sha256:<64 hex>"
        );
    }

    assert_eq!(
        parse_json(&first_files[Path::new("oci-layout")], "oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"})
    );

    // Every blob is named by the sha256 of its bytes.
    let blobs: BTreeMap<String, &Vec<u8>> = first_files
        .iter()
        .filter_map(|(path, data)| {
            let hex = path.strip_prefix("blobs/sha256").ok()?.to_str()?;
            Some((format!("sha256:{hex}"), data))
        })
        .collect();
    assert!(!blobs.is_empty(), "no blobs under blobs/sha256");
    for (digest, data) in &blobs {
        assert_eq!(
            &sha256_digest(data),
            digest,
            "blob content does not match its name"
        );
    }

    // index.json names each manifest as digests.txt does.
    let index = parse_json(&first_files[Path::new("index.json")], "index.json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_INDEX);
    let entries: Vec<(String, String, String, u64)> = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"][REF_NAME]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                m["digest"].as_str().unwrap_or_default().to_string(),
                m["mediaType"].as_str().unwrap_or_default().to_string(),
                m["size"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, u64)> = digests
        .iter()
        .map(|(name, digest)| {
            let size = blobs.get(digest).map_or(0, |b| b.len() as u64);
            (
                name.clone(),
                digest.clone(),
                MEDIA_MANIFEST.to_string(),
                size,
            )
        })
        .collect();
    assert_eq!(entries, expected, "index.json manifests");
}

#[test]
fn both_variants_round_trip_through_a_registry() {
    // Both tools first, so a missing one is reported before anything starts.
    let skopeo = require_tool("skopeo", "skopeo");
    let python = require_tool("python3", "python3");
    let registry = Registry::start();

    let wasm = std::fs::read(wasm_module()).expect("read the module");
    let tmp = TempDir::new("oci-push");
    let layout = tmp.path().join("layout");
    build_layout(&wasm_module(), &layout, tmp.path(), "build");
    let digests = read_digests(&layout);

    // What `make push IMAGE=... PUSH_FLAGS=--dest-tls-verify=false` runs.
    let image = format!("{}/{REPOSITORY}:test", registry.host());
    let mut push = Command::new(python);
    push.arg(tool_script())
        .arg("push")
        .arg(&layout)
        .arg(&image)
        .arg("--dest-tls-verify=false");
    let pushed = run_ok(push, tmp.path(), "push");

    for (variant, tag) in [("oci", "test"), ("compat", "test-compat")] {
        let digest = digest_of(&digests, variant);
        let reference = format!("{}/{REPOSITORY}:{tag}", registry.host());
        assert!(
            pushed
                .stdout
                .contains(&format!("pushed {variant}: {reference}@{digest}\n")),
            "push output does not name {reference}@{digest}:\n{}",
            pushed.stdout
        );

        // The manifest as the registry serves it to Istio's fetcher.
        let request = format!(
            "GET /v2/{REPOSITORY}/manifests/{tag} HTTP/1.1\r\nhost: {}\r\n\
             accept: {MEDIA_MANIFEST}\r\nconnection: close\r\n\r\n",
            registry.host()
        );
        let served =
            raw_http::exchange(registry.addr(), request.as_bytes(), Duration::from_secs(10))
                .expect("GET the manifest");
        assert_eq!(served.status, 200, "GET {reference}: {}", served.body_str());
        assert_eq!(
            served.header("content-type"),
            Some(MEDIA_MANIFEST.as_bytes()),
            "{reference} content type"
        );
        assert_eq!(
            served.header("docker-content-digest"),
            Some(digest.as_bytes()),
            "the registry's digest of {reference} is not the local manifest digest"
        );
        // Istio's check: sha256 of the served manifest equals WasmPlugin.sha256.
        assert_eq!(
            sha256_digest(&served.body),
            digest,
            "{reference}: sha256 of the manifest"
        );
        assert_ne!(
            sha256_digest(&wasm),
            digest,
            "the manifest digest cannot be the module's own sha256"
        );

        // Pulled back, layers and all, with skopeo.
        let pulled = tmp.path().join(format!("pulled-{variant}"));
        let mut pull = Command::new(&skopeo);
        pull.args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", pulled.display()));
        run_ok(pull, tmp.path(), &format!("pull-{variant}"));
        let manifest_bytes = std::fs::read(pulled.join("manifest.json")).expect("pulled manifest");
        assert_eq!(
            manifest_bytes, served.body,
            "{reference}: pulled manifest bytes"
        );
        let manifest = parse_json(&manifest_bytes, "the pulled manifest");
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        let blob = |descriptor: &Value| -> Vec<u8> {
            let digest = descriptor["digest"].as_str().expect("descriptor digest");
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            let data = std::fs::read(pulled.join(hex))
                .unwrap_or_else(|e| panic!("pulled blob {digest}: {e}"));
            assert_eq!(sha256_digest(&data), digest, "pulled blob content");
            assert_eq!(
                descriptor["size"].as_u64(),
                Some(data.len() as u64),
                "{digest} size"
            );
            data
        };
        match variant {
            "oci" => check_oci_variant(&manifest, blob, &wasm),
            _ => check_compat_variant(&manifest, blob, &wasm),
        }
        println!(
            "{variant}: {reference}@{digest} (WasmPlugin sha256: {})",
            &digest[7..]
        );
    }
}

/// Two layers, runtime config then the module verbatim; the runtime config is
/// also the manifest's config (as `wasme` pushes it).
fn check_oci_variant(manifest: &Value, blob: impl Fn(&Value) -> Vec<u8>, wasm: &[u8]) {
    let layers = manifest["layers"].as_array().expect("layers");
    let layer_types: Vec<&str> = layers
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        layer_types,
        [MEDIA_WASM_CONFIG, MEDIA_WASM_CONTENT],
        "oci layers"
    );
    assert_eq!(
        manifest["config"]["mediaType"], MEDIA_WASM_CONFIG,
        "oci config media type"
    );
    assert_eq!(
        manifest["config"]["digest"], layers[0]["digest"],
        "oci config is the config layer"
    );
    assert_eq!(
        manifest["annotations"]["module.wasm.runtime/type"], "envoy_proxy",
        "oci runtime type annotation"
    );

    let runtime_config = parse_json(&blob(&manifest["config"]), "the runtime config");
    assert_eq!(
        runtime_config,
        json!({
            "type": "envoy_proxy",
            "abiVersions": ["proxy_abi_version_0_2_1"],
            "config": {"rootIds": ["oob_mirror"]},
        })
    );
    assert_eq!(blob(&layers[0]), blob(&manifest["config"]));
    assert!(
        blob(&layers[1]) == wasm,
        "oci content layer differs from the module"
    );
}

/// One tar+gzip layer holding `plugin.wasm`, a standard image config, the
/// compat annotation; nothing in the layer that depends on time or machine.
fn check_compat_variant(manifest: &Value, blob: impl Fn(&Value) -> Vec<u8>, wasm: &[u8]) {
    let layers = manifest["layers"].as_array().expect("layers");
    let layer_types: Vec<&str> = layers
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(layer_types, [MEDIA_LAYER_TAR_GZIP], "compat layers");
    assert_eq!(
        manifest["config"]["mediaType"], MEDIA_IMAGE_CONFIG,
        "compat config media type"
    );
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"], "compat",
        "compat variant annotation"
    );

    let tar_gz = blob(&layers[0]);
    // gzip header: magic, deflate, no flags (no file name), MTIME 0.
    assert_eq!(
        tar_gz.get(..4),
        Some(&[0x1f, 0x8b, 8, 0][..]),
        "gzip magic/method/flags"
    );
    assert_eq!(tar_gz.get(4..8), Some(&[0, 0, 0, 0][..]), "gzip MTIME");
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(tar_gz.as_slice())
        .read_to_end(&mut tar_bytes)
        .expect("gunzip the compat layer");

    let image_config = parse_json(&blob(&manifest["config"]), "the image config");
    assert_eq!(
        image_config,
        json!({
            "architecture": "wasm",
            "os": "wasip1",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar_bytes)]},
        })
    );

    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut files = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let header = entry.header();
        let meta = (
            entry.path().expect("entry path").display().to_string(),
            header.entry_type(),
            header.mode().expect("mode"),
            header.mtime().expect("mtime"),
            header.uid().expect("uid"),
            header.gid().expect("gid"),
            header.username().expect("username").map(str::to_string),
            header.groupname().expect("groupname").map(str::to_string),
        );
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read tar entry");
        files.push((meta, content));
    }
    assert_eq!(
        files.len(),
        1,
        "compat layer files: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let (meta, content) = &files[0];
    assert_eq!(
        meta,
        &(
            "plugin.wasm".to_string(),
            tar::EntryType::Regular,
            0o644,
            0,
            0,
            0,
            Some(String::new()),
            Some(String::new()),
        ),
        "plugin.wasm tar header"
    );
    assert!(content == wasm, "plugin.wasm differs from the module");
}
