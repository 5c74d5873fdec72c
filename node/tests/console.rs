//! The console in a real browser: headless Chromium (Debian package `chromium`, installed by
//! `make setup`) renders the node's pages from its store (SQLite in a temporary directory):
//! the attacks are listed, a filter by class narrows the table, the detail page marks what
//! matched, and the attacks are still there after the node restarts. A screenshot is written
//! to `target/console.png` (the one in docs/ comes from this test).

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {candidate}")])
            .output()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !path.is_empty() {
                return PathBuf::from(path);
            }
        }
    }
    panic!("no Chromium: install the Debian package chromium (`make setup` does)");
}

/// Runs headless Chromium on `url` with `extra` flags; its stdout.
fn headless(url: &str, extra: &[String]) -> String {
    let profile = common::tempdir("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids of the rows of the attacks table, in order.
fn row_ids(dom: &str) -> Vec<String> {
    dom.split("<tr data-id=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_console_lists_filters_and_keeps_the_attacks_in_a_real_browser() {
    let (dir, store) = common::temp_store("console");
    let mut node = common::start_node(&store);

    common::seed_attacks(&node);

    let base_url = format!("http://{}", node.addr());
    let dom = headless(
        &format!("{base_url}/attacks?view=all"),
        &["--dump-dom".into()],
    );
    assert!(dom.contains("<h1>Attacks</h1>"), "{dom}");
    assert!(
        dom.contains("6 exchanges analysed since the node started, 5 with attacks"),
        "{dom}"
    );
    let mut all = row_ids(&dom);
    all.sort();
    assert_eq!(all, ["cmd", "leak", "seed", "sqli", "xss"], "{dom}");
    for needle in [
        "/etc/passwd",
        "100930",
        "942100",
        "941100",
        "932100",
        "951230",
        "/api/reports/7",
    ] {
        assert!(dom.contains(needle), "{needle} not on the page: {dom}");
    }
    assert!(!dom.contains("/api/users/42"), "benign call listed: {dom}");
    // The chart has a bar per class, most frequent first: `cmd` reads /etc/passwd (930120)
    // before it runs a command (932100), so it is LFI first.
    let bars: Vec<&str> = dom
        .split("<rect class=\"bar\" data-class=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(bars, ["lfi", "data_leakage", "sqli", "xss"], "{dom}");

    // Filtering by class narrows the table: the browser submits the form as a user would.
    let dom = headless(
        &format!("{base_url}/attacks?view=all&class=xss&range=all&host=&severity="),
        &["--dump-dom".into()],
    );
    assert_eq!(row_ids(&dom), ["xss"], "{dom}");
    let dom = headless(
        &format!("{base_url}/attacks?class=lfi"),
        &["--dump-dom".into()],
    );
    assert_eq!(row_ids(&dom), ["seed"], "{dom}");
    assert!(dom.contains("Page 1 of 1 (1 rows)"), "{dom}");

    // The detail page shows the exchange with what matched marked.
    let dom = headless(&format!("{base_url}/attacks/sqli"), &["--dump-dom".into()]);
    assert!(dom.contains("SQL injection: GET /api/products"), "{dom}");
    assert!(dom.contains("<mark>"), "nothing marked: {dom}");
    let dom = headless(&format!("{base_url}/attacks/seed"), &["--dump-dom".into()]);
    assert!(dom.contains("<mark>etc/passwd</mark>"), "{dom}");
    assert!(dom.contains("user-agent: curl/8.5.0"), "{dom}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &format!("{base_url}/attacks"),
        &[format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());

    // A restart keeps them: a new node on the same store lists the same attacks.
    node.stop();
    drop(node);
    let node = common::start_node(&store);
    let dom = headless(
        &format!("http://{}/attacks?view=all", node.addr()),
        &["--dump-dom".into()],
    );
    assert!(
        dom.contains("0 exchanges analysed since the node started"),
        "{dom}"
    );
    let mut again = row_ids(&dom);
    again.sort();
    assert_eq!(again, all, "{dom}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
