//! Bounded polling.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // The poll interval of the readiness check itself.
        std::thread::sleep(Duration::from_millis(20));
    }
}
