//! The `/attacks` page in a real browser: headless Chromium (Debian package
//! `chromium`, installed by `make setup`) renders the node's page, whose DOM
//! then lists the attacks, newest first; a screenshot is written to
//! `target/attacks-page.png` (the one in docs/ comes from this test).

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{post_blocking, push_http_request, push_http_response};
use hyper::StatusCode;
use oob_mirror_node::analysis::pool::PoolConfig;
use oob_mirror_node::app::{App, AppConfig};

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
    let profile = tempdir("chromium-profile");
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

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oob-mirror-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_attacks_page_lists_the_attacks_in_a_real_browser() {
    let node = App::start(AppConfig {
        pool: PoolConfig {
            threads: 1,
            ..PoolConfig::default()
        },
        ..AppConfig::new(([127, 0, 0, 1], 0).into())
    })
    .unwrap();
    let detector = node.detector();

    let base = [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ];
    let mut batch = Vec::new();
    let exchanges: [(&str, &str, &str, &[u8]); 5] = [
        ("seed", "GET", "/etc/passwd", b""),
        (
            "sqli",
            "GET",
            "/api/products?id=1%27%20OR%20%271%27%3D%271",
            b"",
        ),
        (
            "xss",
            "POST",
            "/api/comments",
            br#"{"comment":"<script>alert(document.cookie)</script>"}"#,
        ),
        (
            "cmd",
            "POST",
            "/api/ping",
            b"host=127.0.0.1%3Bcat%20/etc/passwd",
        ),
        ("benign", "GET", "/api/users/42", b""),
    ];
    for (id, method, path, body) in exchanges {
        let len = body.len().to_string();
        let mut headers = base.to_vec();
        if id == "xss" {
            headers.push(("content-type", "application/json"));
        }
        if id == "cmd" {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        if !body.is_empty() {
            headers.push(("content-length", &len));
        }
        push_http_request(&mut batch, id, method, path, &headers, body);
        push_http_response(
            &mut batch,
            id,
            200,
            &[("content-type", "application/json")],
            b"{}",
        );
    }
    push_http_request(&mut batch, "leak", "GET", "/api/reports/7", &base, b"");
    push_http_response(
        &mut batch,
        "leak",
        500,
        &[("content-type", "text/html")],
        b"<p>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version</p>",
    );
    assert_eq!(
        post_blocking(node.addr(), false, 12, batch).unwrap(),
        StatusCode::NO_CONTENT
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while detector.snapshot().exchanges_analysed < 6 {
        assert!(
            Instant::now() < deadline,
            "not analysed: {:?}",
            detector.snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let url = format!("http://{}/attacks", node.addr());
    let dom = headless(&url, &["--dump-dom".into()]);
    assert!(dom.contains("<h1>Attacks</h1>"), "{dom}");
    assert!(
        dom.contains("6 exchanges analysed, 5 with attacks"),
        "{dom}"
    );
    let rows = dom.matches("<tr><td class=\"time\">").count();
    assert_eq!(rows, 5, "{dom}");
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

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../attacks-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(&url, &[format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
}
