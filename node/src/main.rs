//! `oob-mirror-node`: the analysis node. It receives oob-mirror batches and Envoy ext_proc
//! streams, pairs each request with its response, runs OWASP CRS on every exchange and
//! reports each attack as one JSON line on stdout, on its pages and in `/metrics`.
//!
//! Scripts wait for `listening on ADDR` on stderr before sending traffic.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use oob_mirror_node::analysis::pool::{Detection, PoolConfig};
use oob_mirror_node::analysis::RulesConfig;
use oob_mirror_node::app::{App, AppConfig, RecordsHook};
use oob_mirror_node::intake::server::{BatchInfo, TlsErrorHook};
use oob_mirror_node::inventory;
use oob_mirror_node::report;
use oob_mirror_node::store::{self, StoreConfig};
use oob_mirror_node::{to_json_line, RequiredHeaders, TlsConfig};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "\
usage: oob-mirror-node [--listen ADDR] [SECURITY OPTIONS] [DETECTION OPTIONS]

Receives oob-mirror batches (HTTP/1.1 or h2c, POST on any path) and Envoy
ext_proc streams (observability mode), pairs every request with its
response and runs it through OWASP CRS by libmodsecurity, detection only.
Each exchange where a rule matched is printed as one JSON line on stdout.
GET /attacks shows them, GET /metrics the counters (Prometheus text),
GET /healthz answers ok.

  --listen ADDR   address to listen on (default 127.0.0.1:9090; port 0 = any)

Security (docs/node-security.md):

  --tls-cert FILE               serve TLS only (h2 and http/1.1 by ALPN) with this
                                PEM certificate chain, leaf first; needs --tls-key
  --tls-key FILE                its PEM private key (PKCS#8, PKCS#1 or SEC1)
  --require-header NAME:VALUE   every batch and ext_proc stream must carry this
                                header (name in any case, value exactly): a batch
                                without it is answered 401, a stream
                                UNAUTHENTICATED, unread. Repeatable; a name given
                                twice accepts either value (rotation)
  --require-header-env NAME:VAR the same, the value read from the environment
                                variable VAR (keeps it out of the process list)

Detection:

  --paranoia N            CRS paranoia level, 1 to 4 (default 1)
  --rules FILE            extra ModSecurity rules, loaded last (repeatable)
  --crs DIR               CRS rules directory (default /usr/share/modsecurity-crs/rules)
  --threads N             analysis threads (default: one per core)
  --queue N               exchanges waiting for analysis before batches are
                          answered 503 (default 1024)
  --pair-timeout-ms MS    how long a record waits for its other half; a request
                          then goes alone (default 10000)
  --max-pending N         records waiting for their other half, at most (default 10000)
  --max-decompressed N    largest decompressed body analysed, bytes (default 1048576)
  --print-records         print every record too, as one JSON line
  --detect                accepted and ignored: the node always analyses (older
                          scripts passed it)

Store (docs/analysis-node.md#the-store); every attack is kept with its exchange for
the console (GET /attacks) and the API (GET /api/v1/, described at
/api/v1/openapi.json):

  --store none                no store: JSON lines only, the console and API answer 503
";

const DISCOVERY_USAGE: &str = "
API discovery (docs/analysis-node.md#api-discovery): every analysed exchange adds to an
inventory in the store, at GET /apis, /api/v1/inventory and
/api/v1/inventory/openapi.json?host=H:

  --inventory on|off          learn the endpoints (default on; needs a store)
  --spec FILE | HOST=FILE     an OpenAPI 3.x spec (JSON or YAML), its host from its servers or
                              given; endpoints seen but not in it are shadow APIs (repeatable)
  --zombie-after DURATION     a spec endpoint not seen for this long is a zombie API
                              (default 7d; 30m, 12h, 2w...)
";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    detect: DetectArgs,
    /// Certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
    /// Its `Debug` never shows a value.
    require: RequiredHeaders,
    /// `None`: `--store none`.
    store: Option<StoreConfig>,
    /// `None`: `--inventory off`.
    inventory: Option<inventory::Config>,
}

#[derive(Debug, Default)]
struct DetectArgs {
    rules: RulesConfig,
    pool: PoolConfig,
    print_records: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}{}{DISCOVERY_USAGE}", store::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("oob-mirror-node: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oob-mirror-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    // The node has its own threads; this runtime only waits for signals.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signal handlers go in before readiness is announced, so a script that
    // sends SIGTERM right after `listening on` still gets a clean exit.
    let (mut interrupt, mut terminate) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };

    // A bad certificate or key stops the node before it listens.
    let tls = match &args.tls {
        Some((cert, key)) => Some(TlsConfig::from_files(cert, key).map_err(io::Error::other)?),
        None => None,
    };
    // Rejected batches are always said (on stderr); records only when asked.
    let rejected: RecordsHook = Arc::new(|batch: &BatchInfo| {
        if batch.error.is_some() {
            print_batch(batch);
        }
    });
    let records: Option<RecordsHook> = args
        .detect
        .print_records
        .then(|| Arc::new(print_batch) as RecordsHook);
    let config = AppConfig {
        on_tls_error: tls.is_some().then(tls_error_printer),
        tls,
        require_headers: args.require,
        rules: args.detect.rules,
        pool: args.detect.pool,
        on_detection: Some(Arc::new(print_detection)),
        on_batch: Some(rejected),
        on_records: records,
        store: args.store,
        inventory: args.inventory,
        ..AppConfig::new(args.listen)
    };
    let mut app = App::start(config)?;
    eprintln!("listening on {}", app.addr());

    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    app.stop();
    drop(app);
    Ok(())
}

/// Says a failed TLS handshake on stderr: the first at once, then at most one
/// line a minute with how many failed meanwhile (a scanner must not flood the
/// log; `/metrics` counts them all).
fn tls_error_printer() -> TlsErrorHook {
    let last: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
    Arc::new(move |peer: SocketAddr, why: &str| {
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *last {
            Some((at, quiet)) if at.elapsed() < Duration::from_secs(60) => *quiet += 1,
            _ => {
                let quiet = last.map_or(0, |(_, n)| n);
                let more = if quiet > 0 {
                    format!(" ({quiet} more since the last line)")
                } else {
                    String::new()
                };
                eprintln!("oob-mirror-node: TLS handshake from {peer} failed: {why}{more}");
                *last = Some((Instant::now(), 0));
            }
        }
    })
}

fn print_detection(detection: &Detection) {
    let mut line = report::json_line(detection);
    line.push('\n');
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Prints the batch's records with a single write, so lines of concurrent
/// batches never interleave, and flushes so readers see them at once.
fn print_batch(batch: &BatchInfo) {
    if let Some(e) = &batch.error {
        eprintln!("oob-mirror-node: batch on {} rejected: {e}", batch.path);
        return;
    }
    let mut out = String::new();
    for record in &batch.records {
        match to_json_line(record) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => eprintln!("oob-mirror-node: cannot render record: {e}"),
        }
    }
    let mut stdout = io::stdout().lock();
    // A closed stdout (reader gone) is not worth dying for: keep acking.
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `Ok(None)` means help was asked for.
fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 9090));
    let mut d = DetectArgs::default();
    let mut store = StoreConfig::default();
    let mut no_store = false;
    let mut discovery = inventory::Config::default();
    let mut discovery_on = true;
    let (mut tls_cert, mut tls_key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let mut require = RequiredHeaders::default();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value()?;
                listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an ip:port address: {v}"))?;
            }
            "--tls-cert" => tls_cert = Some(value()?.into()),
            "--tls-key" => tls_key = Some(value()?.into()),
            // Errors below name the header, never the value.
            "--require-header" => require
                .add_spec(&value()?)
                .map_err(|e| format!("--require-header: {e}"))?,
            "--require-header-env" => {
                let v = value()?;
                let (name, var) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--require-header-env: expected NAME:VAR, not {v}"))?;
                let secret = std::env::var(var).map_err(|_| {
                    format!("--require-header-env: the environment variable {var} is not set")
                })?;
                require
                    .add(name, &secret)
                    .map_err(|e| format!("--require-header-env ({var}): {e}"))?;
            }
            "--detect" => {}
            "--store" if inline.as_deref() == Some("none") => no_store = true,
            f if StoreConfig::is_flag(f) => {
                let v = value()?;
                if f == "--store" && v == "none" {
                    no_store = true;
                } else {
                    store.parse_flag(f, &v)?;
                }
            }
            "--inventory" => {
                discovery_on = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--inventory: on or off, not {other}")),
                };
            }
            "--spec" => discovery.specs.extend(inventory::spec::load(&value()?)?),
            "--zombie-after" => {
                let v = value()?;
                discovery.zombie_after = humantime::parse_duration(&v)
                    .map_err(|e| format!("--zombie-after: {e}: {v}"))?;
            }
            "--print-records" => {
                d.print_records = true;
            }
            "--paranoia" => {
                let n: u8 = number(&flag, &value()?)?;
                if !(1..=4).contains(&n) {
                    return Err(format!("--paranoia: 1 to 4, not {n}"));
                }
                d.rules.paranoia = n;
            }
            "--rules" => {
                d.rules.extra.push(value()?.into());
            }
            "--crs" => {
                d.rules.crs_rules = value()?.into();
            }
            "--threads" => {
                d.pool.threads = positive(&flag, &value()?)?;
            }
            "--queue" => {
                d.pool.queue = positive(&flag, &value()?)?;
            }
            "--max-pending" => {
                d.pool.max_pending = positive(&flag, &value()?)?;
            }
            "--max-decompressed" => {
                d.pool.max_decompressed = positive(&flag, &value()?)?;
            }
            "--pair-timeout-ms" => {
                d.pool.pair_timeout = Duration::from_millis(number(&flag, &value()?)?);
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
    };
    Ok(Some(Args {
        listen,
        detect: d,
        store: (!no_store).then_some(store),
        inventory: discovery_on.then_some(discovery),
        tls,
        require,
    }))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match number(flag, v)? {
        0 => Err(format!("{flag}: must be at least 1")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap().unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(a.detect.rules.paranoia, 1);
        assert!(!a.detect.print_records);
    }

    #[test]
    fn flags() {
        let a = parse(&["--listen", "127.0.0.1:0", "--detect", "--print-records"])
            .unwrap()
            .unwrap();
        assert_eq!(a.listen.port(), 0);
        assert!(a.detect.print_records);
    }

    #[test]
    fn errors() {
        // The test node's fault flags are not the product's.
        assert!(parse(&["--status", "500"])
            .unwrap_err()
            .contains("unknown argument: --status"));
        assert!(parse(&["--delay-ms", "10"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["-h"]).unwrap().is_none());
        assert!(parse(&["--detect", "--paranoia", "5"]).is_err());
        assert!(parse(&["--detect", "--threads", "0"]).is_err());
    }

    #[test]
    fn security_flags() {
        let a = parse(&[]).unwrap().unwrap();
        assert!(a.tls.is_none() && a.require.is_empty());
        let a = parse(&["--tls-cert", "c.pem", "--tls-key=k.pem"])
            .unwrap()
            .unwrap();
        assert_eq!(a.tls, Some(("c.pem".into(), "k.pem".into())));
        assert!(parse(&["--tls-cert", "c.pem"])
            .unwrap_err()
            .contains("needs --tls-key"));
        assert!(parse(&["--tls-key", "k.pem"])
            .unwrap_err()
            .contains("needs --tls-cert"));

        let a = parse(&[
            "--require-header",
            "X-Token:hunter2",
            "--require-header=x-token:hunter3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.require.names().collect::<Vec<_>>(), ["x-token"]);
        assert!(!format!("{a:?}").contains("hunter"), "{a:?}");
        for bad in ["hunter2", "x-token:", "bad name:hunter2"] {
            let e = parse(&["--require-header", bad]).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse(&["--require-header-env", "x-token:OOB_MIRROR_SINK_TEST_UNSET"]).unwrap_err();
        assert!(e.contains("OOB_MIRROR_SINK_TEST_UNSET is not set"), "{e}");
    }

    #[test]
    fn discovery_flags() {
        let a = parse(&[]).unwrap().unwrap();
        let d = a.inventory.unwrap();
        assert_eq!(d.zombie_after, inventory::DEFAULT_ZOMBIE_AFTER);
        assert!(d.specs.is_empty());
        assert!(parse(&["--inventory", "off"])
            .unwrap()
            .unwrap()
            .inventory
            .is_none());
        assert!(parse(&["--inventory", "maybe"]).is_err());
        let dir = std::env::temp_dir().join(format!("oob-mirror-spec-flag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("shop.yaml");
        std::fs::write(
            &file,
            "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /a: {get: {}}\n",
        )
        .unwrap();
        let arg = format!("shop.example.com={}", file.display());
        let a = parse(&["--spec", &arg, "--zombie-after=12h"])
            .unwrap()
            .unwrap();
        let d = a.inventory.unwrap();
        assert_eq!(d.specs[0].host, "shop.example.com");
        assert_eq!(d.zombie_after, Duration::from_secs(12 * 3600));
        assert!(parse(&["--spec", &file.display().to_string()])
            .unwrap_err()
            .contains("no host"));
        assert!(parse(&["--zombie-after", "soon"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn detect_flags() {
        let a = parse(&[
            "--detect",
            "--paranoia=2",
            "--rules",
            "a.conf",
            "--rules",
            "b.conf",
            "--threads",
            "3",
            "--queue",
            "5",
            "--pair-timeout-ms",
            "250",
        ])
        .unwrap()
        .unwrap();
        let d = a.detect;
        assert_eq!(d.rules.paranoia, 2);
        assert_eq!(d.rules.extra.len(), 2);
        assert_eq!(d.pool.threads, 3);
        assert_eq!(d.pool.queue, 5);
        assert_eq!(d.pool.pair_timeout, Duration::from_millis(250));
        assert!(!d.print_records);
    }
}
