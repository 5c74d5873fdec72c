//! A real OCI registry per test (Debian's `docker-registry`, the CNCF
//! distribution registry) and the command-line tools the image tests drive
//! (`python3 tools/oci_image.py`, `skopeo`), each bounded in time and reaped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::paths::TempDir;
use super::raw_http;
use super::wait::poll_until;

/// How long the registry may take to listen and answer `GET /v2/`.
pub const REGISTRY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one tool run (a push or pull of a ~250 KB image over loopback).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The path of `name` on `PATH`. Fails the test, saying how to install it,
/// when it is missing: these tests never pass by skipping.
pub fn require_tool(name: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH. The OCI image tests need a local registry and skopeo: \
             run `make setup` as root (or `bash .ci/run`), which installs the missing Debian \
             packages, or `apt-get install -y {debian_package}`"
        )
    })
}

/// What a finished tool run printed.
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion (stdout and stderr to files in `scratch`, so
/// neither pipe can fill up), killing and reaping it after [`TOOL_TIMEOUT`].
/// Fails the test, with both outputs, unless it exits successfully.
pub fn run_ok(mut command: Command, scratch: &Path, label: &str) -> ToolOutput {
    let stdout_path = scratch.join(format!("{label}.stdout"));
    let stderr_path = scratch.join(format!("{label}.stderr"));
    let stdout = std::fs::File::create(&stdout_path).expect("create stdout file");
    let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let status = poll_until(TOOL_TIMEOUT, || child.try_wait().ok().flatten());
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{shown} did not finish within {TOOL_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            read(&stdout_path),
            read(&stderr_path)
        );
    };
    let output = ToolOutput {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    };
    assert!(
        output.status.success(),
        "{shown} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
    output
}

/// A running registry: plain HTTP on 127.0.0.1, on a port the kernel chose
/// (the registry binds port 0 and logs the address), storage in a temp dir.
/// Dropping it kills and reaps the process; when the test is panicking, the
/// registry's log goes to stderr first.
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    // Declared last: the directory goes after the process that writes to it.
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = require_tool("docker-registry", "docker-registry");
        let dir = TempDir::new("registry");
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        // A fixed http.secret: without one the registry logs a warning per start.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:0\n  secret: oob-mirror-test\n",
            dir.path().join("storage").display()
        );
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(&log_path).expect("create registry log");
        let log_err = log.try_clone().expect("clone registry log handle");
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} serve: {e}", bin.display()));
        let mut registry = Registry {
            child: Some(child),
            // Replaced once the registry says where it listens.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let ready = poll_until(REGISTRY_READY_TIMEOUT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("docker-registry exited before it was ready ({status})");
            }
            let addr = listening_addr(&self.log())?;
            let resp = raw_http::get(addr, "/v2/", Duration::from_secs(2)).ok()?;
            (resp.status == 200).then_some(addr)
        });
        match ready {
            Some(addr) => self.addr = addr,
            None => panic!("docker-registry was not ready within {REGISTRY_READY_TIMEOUT:?}"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as image references spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// The address in the registry's `listening on 127.0.0.1:PORT` log line.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    let (_, rest) = log.split_once("listening on ")?;
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))?;
    rest.get(..end)?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== docker-registry log ({}) =====\n{}\n===== end of docker-registry log =====",
                self.log_path.display(),
                self.log()
            );
        }
    }
}
