//! The analysis node as a container image (`make node-image`, `make push-node`:
//! `tools/oci_image.py node-image` and `push-node`), built without Docker, then run.
//!
//! - The layout is reproducible (two builds from copies of the binary under other names and
//!   mtimes are the same bytes) and holds exactly what the node needs: the binary, every
//!   shared library `ldd` resolves for it and the dynamic loader, the CRS rules, a non-root
//!   user owning an empty data directory; the image config says who runs what, where.
//! - The image is pushed to a real registry (Debian's `docker-registry`) with the tool, pulled
//!   back by its digest with skopeo, unpacked, and run with **crun** (an OCI runtime) as the
//!   image says: its user (uid 65532), its entrypoint and working directory, a read-only root
//!   filesystem and a writable data directory, as the Deployment in `istio/node/` runs it. A
//!   batch in wire format v1, written by the filter's own encoder, goes in; the attacks come
//!   out of the node's API and the store's file appears in the data directory.
//!
//! crun on this kind of machine: the host has cgroups v1 and v2 side by side ("hybrid"),
//! which crun refuses; the container runs without a cgroup of its own (`--cgroup-manager
//! disabled`) in a mount namespace of its own where cgroup v2 alone is mounted, and in the
//! host's network namespace (like `podman run --network host`), on a free loopback port.
//! Needs root (as CI runs), crun, skopeo and docker-registry (`make setup` installs them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use oob_mirror::body::BodyCapture;
use oob_mirror::encode::{encode_request, encode_response};
use oob_mirror::record::{RequestRecord, ResponseRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::oci::{require_tool, run_ok, Registry};
use support::paths::{repo_root, TempDir};
use support::ports::free_port;
use support::raw_http;
use support::wait::poll_until;

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const REPOSITORY: &str = "oob-mirror-node";
const NODE_UID: u64 = 65532;
const BINARY: &str = "usr/local/bin/oob-mirror-node";
const DATA_DIR: &str = "/var/lib/oob-mirror";
const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";
/// How long the node in the container may take to load CRS and answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the analysis of three exchanges may take to reach the API.
const ANALYSED_TIMEOUT: Duration = Duration::from_secs(30);

fn sha256_digest(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The node to pack: `$OOB_MIRROR_NODE_BIN`, else `make node`'s `target/release/oob-mirror-node`.
fn node_binary() -> PathBuf {
    let path = match std::env::var_os("OOB_MIRROR_NODE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/release/oob-mirror-node"),
    };
    assert!(
        path.is_file(),
        "the node binary is not at {}: build it with `make node` (make test does), or set \
         OOB_MIRROR_NODE_BIN",
        path.display()
    );
    path
}

/// `python3 tools/oci_image.py node-image BINARY OUT`.
fn build_layout(binary: &Path, out: &Path, scratch: &Path, label: &str) -> String {
    let mut command = Command::new(require_tool("python3", "python3"));
    command
        .arg(repo_root().join("tools/oci_image.py"))
        .arg("node-image")
        .arg(binary)
        .arg(out);
    run_ok(command, scratch, label).stdout
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A layout's blob by descriptor, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let path = layout.join("blobs/sha256").join(&digest[7..]);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(sha256_digest(&data), digest, "blob content vs its digest");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "{digest} size"
    );
    data
}

/// The one manifest of a node layout, its config and its layers (tar bytes, gunzipped).
struct Image {
    manifest_digest: String,
    manifest: Value,
    config: Value,
    layers: Vec<Vec<u8>>,
}

fn read_image(layout: &Path) -> Image {
    let index = read_json(&layout.join("index.json"));
    // skopeo's layouts leave the index's mediaType out (it is optional); the tool's name it.
    if let Some(media_type) = index.get("mediaType") {
        assert_eq!(media_type, MEDIA_INDEX);
    }
    let entries = index["manifests"].as_array().expect("index manifests");
    assert_eq!(entries.len(), 1, "one manifest in the node layout: {index}");
    assert_eq!(entries[0]["annotations"][REF_NAME], "node");
    assert_eq!(entries[0]["mediaType"], MEDIA_MANIFEST);
    let manifest_bytes = blob(layout, &entries[0]);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], MEDIA_IMAGE_CONFIG);
    let config: Value =
        serde_json::from_slice(&blob(layout, &manifest["config"])).expect("config JSON");
    let layers = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|layer| {
            assert_eq!(layer["mediaType"], MEDIA_LAYER_TAR_GZIP);
            let gz = blob(layout, layer);
            // gzip header: no file name, MTIME 0.
            assert_eq!(&gz[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], "gzip header");
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut tar)
                .expect("gunzip a layer");
            tar
        })
        .collect();
    Image {
        manifest_digest: entries[0]["digest"].as_str().unwrap().to_owned(),
        manifest,
        config,
        layers,
    }
}

/// One tar entry: (type, mode, uid, gid, content or link target).
type Entry = (tar::EntryType, u32, u64, u64, Vec<u8>);

/// Every entry of every layer by path (later layers win, as when unpacked), checking on the
/// way that nothing in them depends on the machine or the time.
fn entries(image: &Image) -> BTreeMap<String, Entry> {
    let mut all = BTreeMap::new();
    for (n, layer) in image.layers.iter().enumerate() {
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut paths = Vec::new();
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            // Directories are named with a trailing slash in the tar.
            let path = entry.path().expect("path").display().to_string();
            let path = path.trim_end_matches('/').to_owned();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0, "layer {n}: {path} mtime");
            assert_eq!(
                header.username().unwrap(),
                Some(""),
                "layer {n}: {path} uname"
            );
            assert_eq!(
                header.groupname().unwrap(),
                Some(""),
                "layer {n}: {path} gname"
            );
            let kind = header.entry_type();
            let meta = (
                kind,
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
            );
            let mut content = Vec::new();
            if kind == tar::EntryType::Symlink {
                let target = entry.link_name().unwrap().expect("symlink target");
                content = target.display().to_string().into_bytes();
            } else {
                entry.read_to_end(&mut content).expect("read entry");
            }
            paths.push(path.clone());
            all.insert(path, (meta.0, meta.1, meta.2, meta.3, content));
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "layer {n}: entries are not sorted by path");
    }
    all
}

/// The libraries `ldd` resolves for the binary (dynamic loader included), each with the path
/// the image must hold it at: its directory's real path and the name the loader asks for.
fn linked_libraries(binary: &Path) -> Vec<(PathBuf, String)> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let libraries: Vec<(PathBuf, String)> = text
        .lines()
        .filter_map(|line| {
            let path = line
                .split_whitespace()
                .find(|field| field.starts_with('/'))?;
            let host = PathBuf::from(path);
            let dir = std::fs::canonicalize(host.parent()?).unwrap();
            let in_image = dir.join(host.file_name()?).display().to_string();
            Some((host, in_image.trim_start_matches('/').to_owned()))
        })
        .collect();
    assert!(
        libraries
            .iter()
            .any(|(p, _)| p.ends_with("libmodsecurity.so.3")),
        "ldd does not list libmodsecurity: {text}"
    );
    libraries
}

#[test]
fn the_node_image_is_reproducible_and_holds_what_the_node_needs() {
    let binary = node_binary();
    let bytes = std::fs::read(&binary).unwrap();
    let tmp = TempDir::new("node-image");
    // The second build packs a copy under another name, in another directory, with another
    // mtime: none of it may reach the image.
    let copy = tmp.path().join("elsewhere/other-name");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&binary, &copy).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)))
        .unwrap();
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    let said = build_layout(&binary, &first, tmp.path(), "build-first");
    build_layout(&copy, &second, tmp.path(), "build-second");
    let listing = |dir: &Path| -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        for sub in ["", "blobs/sha256"] {
            for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let name = path.strip_prefix(dir).unwrap().display().to_string();
                    files.insert(name, sha256_digest(&std::fs::read(&path).unwrap()));
                }
            }
        }
        files
    };
    assert_eq!(
        listing(&first),
        listing(&second),
        "two builds differ (file: sha256)"
    );
    assert_eq!(
        read_json(&first.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );

    let image = read_image(&first);
    let digests = std::fs::read_to_string(first.join("digests.txt")).unwrap();
    assert_eq!(digests, format!("node {}\n", image.manifest_digest));
    assert!(
        said.contains(&format!("node {} (amd64, ", image.manifest_digest)),
        "{said}"
    );

    // The image config: who runs what, where.
    let config = &image.config;
    assert_eq!(
        (&config["architecture"], &config["os"]),
        (&json!("amd64"), &json!("linux"))
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    let run = &config["config"];
    assert_eq!(run["User"], "65532:65532");
    assert_eq!(
        run["Entrypoint"],
        json!([
            "/usr/local/bin/oob-mirror-node",
            "--listen",
            "0.0.0.0:9090",
            "--data-dir",
            DATA_DIR
        ])
    );
    assert_eq!(
        run.get("Cmd"),
        None,
        "no Cmd: a Deployment's args add flags"
    );
    assert_eq!(run["Env"], json!(["PATH=/usr/local/bin:/usr/bin:/bin"]));
    assert_eq!(run["WorkingDir"], DATA_DIR);
    assert_eq!(run["ExposedPorts"], json!({"9090/tcp": {}}));
    assert_eq!(run["Volumes"], json!({ DATA_DIR: {} }));
    let labels = &run["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "oob-mirror-node");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    let installed = |package: &str| {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .expect("dpkg-query");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        labels["oob-mirror.modsecurity.version"],
        installed("libmodsecurity3")
    );
    assert_eq!(
        labels["oob-mirror.crs.version"],
        installed("modsecurity-crs")
    );
    let diff_ids: Vec<String> = image.layers.iter().map(|l| sha256_digest(l)).collect();
    assert_eq!(
        config["rootfs"],
        json!({"type": "layers", "diff_ids": diff_ids})
    );
    assert_eq!(image.manifest["layers"].as_array().unwrap().len(), 3);

    let files = entries(&image);
    let dir = tar::EntryType::Directory;
    let regular = tar::EntryType::Regular;
    assert_eq!(
        files[BINARY],
        (regular, 0o755, 0, 0, bytes),
        "the binary, root-owned, executable"
    );
    assert_eq!(
        files["var/lib/oob-mirror"],
        (dir, 0o700, NODE_UID, NODE_UID, vec![]),
        "the data directory: the node's user's, empty"
    );
    assert!(
        !files.keys().any(|p| p.starts_with("var/lib/oob-mirror/")),
        "the data directory is not empty"
    );
    assert_eq!(files["tmp"], (dir, 0o1777, 0, 0, vec![]));
    assert_eq!(
        String::from_utf8(files["etc/passwd"].4.clone()).unwrap(),
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n"
    );
    assert_eq!(
        String::from_utf8(files["etc/group"].4.clone()).unwrap(),
        "root:x:0:\nnonroot:x:65532:\n"
    );
    // Merged /usr: the loader's path (/lib64/ld-linux-x86-64.so.2) goes through a symlink.
    assert_eq!(
        files["lib64"],
        (tar::EntryType::Symlink, 0o777, 0, 0, b"usr/lib64".to_vec())
    );
    for (host, in_image) in linked_libraries(&binary) {
        let (kind, mode, uid, _, content) = files
            .get(&in_image)
            .unwrap_or_else(|| panic!("{} is not in the image at /{in_image}", host.display()));
        assert_eq!((*kind, *uid), (regular, 0), "/{in_image}");
        assert_eq!(mode & 0o644, 0o644, "/{in_image} mode {mode:o}");
        assert!(
            *content == std::fs::read(&host).unwrap(),
            "/{in_image} differs from {}",
            host.display()
        );
    }
    let mut crs_files = 0;
    for entry in std::fs::read_dir(CRS_RULES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let in_image = format!("{}/{name}", CRS_RULES.trim_start_matches('/'));
        let content = &files
            .get(&in_image)
            .unwrap_or_else(|| panic!("{in_image} not in the image"))
            .4;
        assert!(
            *content == std::fs::read(&path).unwrap(),
            "{in_image} differs"
        );
        crs_files += 1;
    }
    let packed_crs = files
        .keys()
        .filter(|p| p.starts_with("usr/share/modsecurity-crs/rules/"))
        .count();
    assert_eq!(packed_crs, crs_files, "CRS files in the image");
    // Every package's licence comes along, and the list of what came from where.
    let packages = String::from_utf8(
        files["usr/share/doc/oob-mirror-node/packages.txt"]
            .4
            .clone(),
    )
    .unwrap();
    for package in ["libc6", "libmodsecurity3", "modsecurity-crs"] {
        let line = format!("{package} {}\n", installed(package));
        assert!(packages.contains(&line), "packages.txt lacks {line:?}");
        assert!(
            files.contains_key(&format!("usr/share/doc/{package}/copyright")),
            "no copyright file for {package}"
        );
    }
    println!(
        "node image {}: {} files, {} B of layers",
        image.manifest_digest,
        files.len(),
        image.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum::<u64>()
    );
}

/// Unpacks the image's layers into `root` as a container runtime would: ownership and modes
/// kept (the data directory stays the node user's).
fn unpack(image: &Image, root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    for layer in &image.layers {
        let mut archive = tar::Archive::new(layer.as_slice());
        archive.set_preserve_ownerships(true);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive.unpack(root).expect("unpack a layer");
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A container run by crun, killed, reaped and deleted on drop; its output kept in files and
/// shown when the test fails.
struct Container {
    crun: PathBuf,
    state: PathBuf,
    id: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Container {
    fn run(bundle: &Path, state: &Path, id: &str, logs: &Path) -> Container {
        let crun = require_tool("crun", "crun");
        let unshare = require_tool("unshare", "util-linux");
        let stdout = logs.join("container.stdout");
        let stderr = logs.join("container.stderr");
        let script = "mount -t cgroup2 none /sys/fs/cgroup && \
                      exec \"$0\" --root \"$1\" --cgroup-manager=disabled run --bundle \"$2\" \"$3\"";
        let child = Command::new(unshare)
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(&crun)
            .arg(state)
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn unshare + crun");
        Container {
            crun,
            state: state.to_path_buf(),
            id: id.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- container stdout ---\n{}\n--- container stderr ---\n{}",
            read(&self.stdout),
            read(&self.stderr)
        )
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `crun state`: the container's status and its process id, as the host sees it.
    fn state(&self) -> Value {
        let out = Command::new(&self.crun)
            .arg("--root")
            .arg(&self.state)
            .args(["state", &self.id])
            .output()
            .expect("crun state");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "crun state: {e}: {}{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            )
        })
    }

    fn crun(&self, args: &[&str]) -> bool {
        Command::new(&self.crun)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM, as the kubelet stops a pod; the exit status of the node.
    fn stop(&mut self) -> std::process::ExitStatus {
        assert!(self.crun(&["kill", &self.id, "TERM"]), "crun kill TERM");
        let status = poll_until(Duration::from_secs(20), || self.exited());
        let status =
            status.unwrap_or_else(|| panic!("the node did not stop on SIGTERM\n{}", self.logs()));
        self.child = None;
        status
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.crun(&["kill", &self.id, "KILL"]);
            if poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.crun(&["delete", "--force", &self.id]);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The OCI runtime config of the image as a Deployment runs it: the image's user, entrypoint,
/// environment and working directory; the Deployment's args after the entrypoint; a read-only
/// root; the data directory and /tmp writable (emptyDir volumes there); the host's network.
fn runtime_config(spec: &mut Value, image: &Value, args: &[&str], data_dir: &Path) {
    let run = &image["config"];
    let user = run["User"].as_str().expect("User");
    let (uid, gid) = user.split_once(':').expect("User is UID:GID");
    let mut argv = strings(&run["Entrypoint"]);
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let process = &mut spec["process"];
    process["terminal"] = json!(false);
    process["user"] =
        json!({"uid": uid.parse::<u32>().unwrap(), "gid": gid.parse::<u32>().unwrap()});
    process["args"] = json!(argv);
    process["env"] = json!(strings(&run["Env"]));
    process["cwd"] = run["WorkingDir"].clone();
    spec["root"] = json!({"path": "rootfs", "readonly": true});
    let mounts = spec["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({
        "destination": DATA_DIR, "type": "bind", "source": data_dir,
        "options": ["rbind", "rw", "nosuid", "nodev"],
    }));
    mounts.push(json!({
        "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"],
    }));
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
}

/// One exchange as the filter encodes it.
fn push_exchange(batch: &mut Vec<u8>, id: &str, method: &str, path: &str, status: u32) {
    let body = BodyCapture::new(1024);
    let request = RequestRecord {
        id: id.to_owned(),
        ts_ns: 1_764_621_249_000_000_000,
        method: method.to_owned(),
        scheme: "http".to_owned(),
        authority: "api.example.com".to_owned(),
        path: path.to_owned(),
        protocol: "HTTP/1.1".to_owned(),
        source: "203.0.113.7:40000".to_owned(),
        destination: "10.0.0.1:8080".to_owned(),
        tls: false,
        headers: vec![("user-agent", "curl/8.5.0"), ("accept", "*/*")].into(),
        trailers: Default::default(),
        body,
        complete: true,
    };
    let mut response_body = BodyCapture::new(1024);
    response_body.add(2, b"{}");
    let response = ResponseRecord {
        id: id.to_owned(),
        ts_ns: 1_764_621_249_001_000_000,
        status,
        details: "via_upstream".to_owned(),
        headers: vec![("content-type", "application/json")].into(),
        trailers: Default::default(),
        body: response_body,
        complete: true,
        duration_us: 1000,
    };
    encode_request(&request, batch);
    encode_response(&response, batch);
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let resp = raw_http::get(addr, path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, value)
}

#[test]
fn the_node_image_from_the_registry_runs_under_crun_as_its_user_and_detects_attacks() {
    // Every tool first, so a missing one is reported before anything starts.
    let skopeo = require_tool("skopeo", "skopeo");
    let python = require_tool("python3", "python3");
    require_tool("crun", "crun");
    let binary = node_binary();
    let registry = Registry::start();
    let tmp = TempDir::new("node-image-run");
    let layout = tmp.path().join("layout");
    build_layout(&binary, &layout, tmp.path(), "build");
    let local = read_image(&layout);

    // What `make push-node NODE_IMAGE=... PUSH_FLAGS=--dest-tls-verify=false` runs.
    let image = format!("{}/{REPOSITORY}:test", registry.host());
    let mut push = Command::new(python);
    push.arg(repo_root().join("tools/oci_image.py"))
        .arg("push-node")
        .arg(&layout)
        .arg(&image)
        .arg("--dest-tls-verify=false");
    let pushed = run_ok(push, tmp.path(), "push");
    let digest = &local.manifest_digest;
    let pinned = format!("{}/{REPOSITORY}@{digest}", registry.host());
    assert!(
        pushed.stdout.contains(&format!(
            "pushed node: {image}@{digest}\n  NODE_IMAGE={pinned}\n"
        )),
        "push output:\n{}",
        pushed.stdout
    );
    let request = format!(
        "GET /v2/{REPOSITORY}/manifests/test HTTP/1.1\r\nhost: {}\r\naccept: {MEDIA_MANIFEST}\r\n\
         connection: close\r\n\r\n",
        registry.host()
    );
    let served = raw_http::exchange(registry.addr(), request.as_bytes(), Duration::from_secs(10))
        .expect("GET the manifest");
    assert_eq!(served.status, 200, "{}", served.body_str());
    assert_eq!(
        served.header("docker-content-digest"),
        Some(digest.as_bytes())
    );
    assert_eq!(&sha256_digest(&served.body), digest);

    // Pulled back by digest, as a Deployment pinned to it pulls it; the run uses these bytes.
    let pulled = tmp.path().join("pulled");
    let mut pull = Command::new(&skopeo);
    pull.args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{pinned}"))
        .arg(format!("oci:{}:node", pulled.display()));
    run_ok(pull, tmp.path(), "pull");
    let image = read_image(&pulled);
    assert_eq!(&image.manifest_digest, digest, "pulled manifest digest");
    assert_eq!(image.config, local.config, "pulled config");

    let bundle = tmp.path().join("bundle");
    unpack(&image, &bundle.join("rootfs"));
    let mut spec_cmd = Command::new(require_tool("crun", "crun"));
    spec_cmd.arg("spec").current_dir(&bundle);
    run_ok(spec_cmd, tmp.path(), "crun-spec");
    // The data directory: an empty one owned by the image's user, as an emptyDir with
    // fsGroup 65532 is.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NODE_UID as u32), Some(NODE_UID as u32)).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let spec_path = bundle.join("config.json");
    let mut spec = read_json(&spec_path);
    runtime_config(
        &mut spec,
        &image.config,
        &["--listen", &listen, "--threads", "1"],
        &data,
    );
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let state = tmp.path().join("crun-state");
    let id = format!("oob-mirror-node-test-{}", std::process::id());
    let mut container = Container::run(&bundle, &state, &id, tmp.path());

    let addr: SocketAddr = listen.parse().unwrap();
    let ready = poll_until(READY_TIMEOUT, || {
        if let Some(status) = container.exited() {
            panic!("the container exited ({status})\n{}", container.logs());
        }
        let resp = raw_http::get(addr, "/healthz", Duration::from_secs(2)).ok()?;
        (resp.status == 200).then_some(resp.body_str())
    });
    assert_eq!(
        ready.as_deref(),
        Some("ok\n"),
        "no /healthz within {READY_TIMEOUT:?}\n{}",
        container.logs()
    );

    // It runs as the image's user, not as root.
    let state_now = container.state();
    assert_eq!(state_now["status"], "running", "{state_now}");
    let pid = state_now["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "65532", "65532", "65532", "65532"]
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/local/bin/oob-mirror-node"));

    // Three exchanges in one batch: a path traversal, an SQL injection, a benign call.
    let mut batch = Vec::new();
    push_exchange(&mut batch, "img-lfi", "GET", "/etc/passwd", 200);
    push_exchange(
        &mut batch,
        "img-sqli",
        "GET",
        "/api/items?id=1%27%20OR%20%271%27=%271",
        200,
    );
    push_exchange(&mut batch, "img-ok", "GET", "/api/items/42", 200);
    let mut request = format!(
        "POST /v1/records HTTP/1.1\r\nhost: oob-mirror\r\ncontent-type: application/msgpack\r\n\
         x-oob-mirror-version: 1\r\nx-oob-mirror-records: 6\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        batch.len()
    )
    .into_bytes();
    request.extend_from_slice(&batch);
    let answer = raw_http::exchange(addr, &request, Duration::from_secs(10)).expect("POST batch");
    assert_eq!(answer.status, 204, "batch answer: {}", answer.body_str());

    let listed = poll_until(ANALYSED_TIMEOUT, || {
        let (status, v) = get_json(addr, "/api/v1/attacks");
        (status == 200 && v["total"] == 2).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "the API did not list 2 attacks: {:?}\n{}",
            get_json(addr, "/api/v1/attacks"),
            container.logs()
        )
    });
    let items = listed["items"].as_array().unwrap();
    let mut found: Vec<(String, String)> = items
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["class"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("img-lfi".to_owned(), "lfi".to_owned()),
            ("img-sqli".to_owned(), "sqli".to_owned())
        ]
    );
    let rules = |id: &str| -> Vec<u64> {
        let attack = items.iter().find(|a| a["id"] == id).unwrap();
        attack["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(rules("img-lfi"), [100930, 949110], "{listed}");
    assert!(rules("img-sqli").contains(&942100), "{listed}");
    let metrics = raw_http::get(addr, "/metrics", Duration::from_secs(5))
        .unwrap()
        .body_str();
    for line in [
        "oob_mirror_node_records_received_total 6",
        "oob_mirror_node_exchanges_analysed_total 3",
        "oob_mirror_node_exchanges_paired_total 3",
        "oob_mirror_node_exchanges_with_attacks_total 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    let console = raw_http::get(addr, "/attacks", Duration::from_secs(5)).unwrap();
    assert_eq!(console.status, 200);
    assert!(
        console.body_str().contains("/etc/passwd"),
        "the console lists the attack"
    );
    let status = container.stop();
    assert!(
        status.success(),
        "the node's exit on SIGTERM: {status}\n{}",
        container.logs()
    );

    // The store was written in the data directory, by the node's user.
    let store = data.join("attacks.sqlite");
    let meta = std::fs::metadata(&store)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", store.display(), container.logs()));
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (NODE_UID as u32, NODE_UID as u32));
}
