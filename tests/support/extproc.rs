//! The recording ext_proc server (`tools/extproc-sink --record`) as a child process: every
//! message it receives arrives here as one decoded JSON object, in order, per stream.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::paths::repo_root;
use super::wait::poll_until;

/// `$EXTPROC_SINK`, else the release build in `tools/extproc-sink` (`make extproc-sink`).
pub fn extproc_sink_bin() -> PathBuf {
    let path = match std::env::var_os("EXTPROC_SINK") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("tools/extproc-sink/target/release/extproc-sink"),
    };
    assert!(
        path.is_file(),
        "extproc-sink not found at {}: build it with `make extproc-sink` (make test does)",
        path.display()
    );
    path
}

/// What the recorder printed: `{"stream":N,"msg":{…}}` and `{"stream":N,"end":"…"}` lines.
#[derive(Default)]
struct Log {
    messages: Vec<(u64, Value)>,
    ends: Vec<(u64, String)>,
}

pub struct Recorder {
    child: Child,
    port: u16,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    /// `close`: `end` (close when the response has ended or the client half-closes), `never`,
    /// or `reset`.
    pub fn start(close: &str) -> Recorder {
        let mut child = Command::new(extproc_sink_bin())
            .args(["--listen", "127.0.0.1:0", "--record", "--close", close])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn extproc-sink");
        let stderr = child.stderr.take().expect("stderr");
        let mut first = String::new();
        BufReader::new(stderr)
            .read_line(&mut first)
            .expect("read extproc-sink's first line");
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("extproc-sink did not say where it listens: {first:?}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(stream) = v.get("stream").and_then(Value::as_u64) else {
                    continue;
                };
                let mut log = sink.lock().expect("log");
                if let Some(msg) = v.get("msg") {
                    log.messages.push((stream, msg.clone()));
                } else if let Some(end) = v.get("end").and_then(Value::as_str) {
                    log.ends.push((stream, end.to_string()));
                }
            }
        });
        Recorder { child, port, log }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Streams the server has ended (its side closed, or the client went away).
    pub fn ended(&self) -> usize {
        self.log.lock().expect("log").ends.len()
    }

    /// Waits until `n` streams have ended; panics with what arrived otherwise.
    pub fn wait_ended(&self, n: usize, timeout: Duration) {
        if poll_until(timeout, || (self.ended() >= n).then_some(())).is_none() {
            panic!(
                "{} of {n} ext_proc streams ended within {timeout:?}; streams so far: {:?}",
                self.ended(),
                self.log.lock().expect("log").ends
            );
        }
    }

    /// Every message received so far, by stream in the order the streams were opened.
    pub fn streams(&self) -> Vec<Vec<Value>> {
        let log = self.log.lock().expect("log");
        let count = log.messages.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        let mut streams = vec![Vec::new(); usize::try_from(count).expect("count")];
        for (stream, msg) in &log.messages {
            streams[usize::try_from(*stream).expect("stream")].push(msg.clone());
        }
        streams
    }

    pub fn message_count(&self) -> usize {
        self.log.lock().expect("log").messages.len()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
