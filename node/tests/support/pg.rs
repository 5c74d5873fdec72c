//! A throwaway PostgreSQL server for tests: `initdb` in a temp dir, `postgres` on a free
//! loopback port (as the `postgres` OS user when the tests run as root, which PostgreSQL
//! refuses), one database and one user with a password, stopped and removed on drop.
//!
//! std only, so any test crate can use it: `#[path = "support/pg.rs"] mod pg;`.
//!
//! The binaries: `$OOB_MIRROR_PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout). None of them: the test fails, saying that
//! `make setup` installs PostgreSQL.
#![allow(dead_code, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const USER: &str = "oob";
pub const DATABASE: &str = "oob";
pub const PASSWORD: &str = "test-only-Pa55word";
const SUPERUSER: &str = "postgres";
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The server's output so far, and a signal for each new line.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

pub struct PgCluster {
    bindir: PathBuf,
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    as_postgres: bool,
    child: Option<Child>,
    log: Arc<Log>,
}

fn fail(what: &str) -> ! {
    panic!("pg test helper: {what}")
}

/// Where `initdb` and `postgres` are.
pub fn bindir() -> PathBuf {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(d) = std::env::var("OOB_MIRROR_PG_BINDIR") {
        let d = PathBuf::from(d);
        if has_server(&d) {
            return d;
        }
        fail(&format!(
            "OOB_MIRROR_PG_BINDIR={} has no initdb and postgres",
            d.display()
        ));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return d;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, d)) => d,
        None => fail(
            "PostgreSQL's server binaries (initdb, postgres) were not found (not by \
             pg_config --bindir, not in /usr/lib/postgresql/*/bin): `make setup` installs \
             them (Debian package postgresql)",
        ),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

impl PgCluster {
    /// A new cluster, running, with [`USER`] (password [`PASSWORD`]) owning [`DATABASE`].
    pub fn start() -> PgCluster {
        static N: AtomicU32 = AtomicU32::new(0);
        let bindir = bindir();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!(
            "oob-mirror-pg-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| fail(&format!("creating {}: {e}", root.display())));
        let as_postgres = running_as_root();
        let mut pg = PgCluster {
            bindir,
            data: root.join("data"),
            socket_dir: root.clone(),
            root,
            port: free_port(),
            as_postgres,
            child: None,
            log: Arc::new(Log::default()),
        };
        if as_postgres {
            pg.run_checked(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&pg.root),
            );
        }
        let pwfile = pg.root.join("superuser.pw");
        std::fs::write(&pwfile, "unused\n")
            .unwrap_or_else(|e| fail(&format!("writing {}: {e}", pwfile.display())));
        if as_postgres {
            pg.run_checked(Command::new("chown").arg("postgres:postgres").arg(&pwfile));
        }
        // Local (socket) connections trusted for the superuser's setup; TCP needs a password.
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        pg.run_checked(&mut initdb);
        pg.start_server();
        pg.psql(&format!("CREATE USER {USER} PASSWORD '{PASSWORD}'"));
        pg.psql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"));
        pg
    }

    /// `postgres://oob@127.0.0.1:PORT/oob`: the password is [`PASSWORD`], apart.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// A command for one of the binaries, as the `postgres` user when we are root.
    fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run_checked(&self, cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| fail(&format!("running {cmd:?}: {e}")));
        if !out.status.success() {
            fail(&format!(
                "{cmd:?} failed ({}):\n{}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ));
        }
    }

    /// Runs SQL as the superuser over the socket.
    pub fn psql(&self, sql: &str) {
        let mut c = self.command("psql");
        c.arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql]);
        self.run_checked(&mut c);
    }

    /// Starts the server (again, after [`PgCluster::stop`]) and waits until it accepts
    /// connections: `pg_isready`, asked again each time the server logs a line.
    pub fn start_server(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting postgres: {e}")));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&self.log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut t) = log.text.lock() {
                        t.push_str(&line);
                        t.push('\n');
                    }
                    log.grew.notify_all();
                }
                log.grew.notify_all();
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let mut ready = self.command("pg_isready");
            ready.arg("-h").arg(&self.socket_dir).args([
                "-p",
                &self.port.to_string(),
                "-t",
                "1",
                "-q",
            ]);
            let before = self.log().len();
            if ready.status().map(|s| s.success()).unwrap_or(false) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                fail(&format!(
                    "postgres exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                fail(&format!(
                    "postgres not ready within {READY_WITHIN:?}; its log:\n{}",
                    self.log()
                ));
            }
            // Until the server says something new (or 100 ms, for a silent one).
            if let Ok(t) = self.log.text.lock() {
                if t.len() == before {
                    let _ = self
                        .log
                        .grew
                        .wait_timeout(t, left.min(Duration::from_millis(100)));
                }
            }
        }
    }

    /// Stops the server (fast shutdown: connections are cut, as in an outage), and waits
    /// for it to exit. The data stays; [`PgCluster::start_server`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "PostgreSQL server log ({}):\n{}",
                self.root.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
