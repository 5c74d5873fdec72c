//! The API discovery page in a real browser: headless Chromium renders `/apis` from the node's
//! store (SQLite in a temporary directory): the endpoints of the traffic are listed by host with
//! their sensitive-data badges and links to their attacks, and the filters narrow them.

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

/// The DOM of `url` as headless Chromium renders it.
fn dom(url: &str) -> String {
    let profile = common::tempdir("chromium-apis-profile");
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
            "--window-size=1400,900",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
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

/// The endpoints listed, in order (`METHOD TEMPLATE`).
fn endpoints(dom: &str) -> Vec<String> {
    dom.split("<tr data-endpoint=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_apis_page_lists_the_endpoints_and_its_filters_narrow_them_in_a_real_browser() {
    let (dir, store) = common::temp_store("apis");
    let node = common::start_node(&store);
    common::seed_attacks(&node);
    // One more exchange, whose response carries an email and a card number.
    let mut batch = Vec::new();
    common::push_http_request(
        &mut batch,
        "profile",
        "GET",
        "/api/users/42/profile",
        &[("host", "api.example.com"), ("authorization", "Bearer x")],
        b"",
    );
    common::push_http_response(
        &mut batch,
        "profile",
        200,
        &[("content-type", "application/json")],
        br#"{"contact":{"email":"ada@example.com"},"card":"4111 1111 1111 1111"}"#,
    );
    assert_eq!(
        common::post_blocking(node.addr(), false, 2, batch).unwrap(),
        hyper::StatusCode::NO_CONTENT
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.detector().snapshot().exchanges_analysed < 7 {
        assert!(std::time::Instant::now() < deadline, "not analysed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(node.flush_inventory(Duration::from_secs(10)));

    let base = format!("http://{}", node.addr());
    let page = dom(&format!("{base}/apis"));
    assert!(page.contains("<h1>APIs</h1>"), "{page}");
    assert!(page.contains("<h2>api.example.com</h2>"), "{page}");
    assert_eq!(
        endpoints(&page),
        [
            "POST /api/comments",
            "POST /api/ping",
            "GET /api/products",
            "GET /api/reports/{report_id}",
            "GET /api/users/{user_id}",
            "GET /api/users/{user_id}/profile",
            "GET /etc/passwd",
        ],
        "{page}"
    );
    assert!(page.contains("7 endpoints on 1 hosts match"), "{page}");
    // Sensitive-data badges, and the attacks on an endpoint one click away.
    assert!(
        page.contains("<span class=\"badge sensitive\" data-type=\"card\">card</span>"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"badge sensitive\" data-type=\"email\">email</span>"),
        "{page}"
    );
    assert!(
        page.contains("href=\"/attacks?host=api.example.com&amp;path=%2Fapi%2Fping\""),
        "{page}"
    );
    assert!(
        !page.contains("ada@example.com") && !page.contains("4111"),
        "a value on the page: {page}"
    );
    // The link leads to the attack on it.
    let attacks = dom(&format!(
        "{base}/attacks?host=api.example.com&path=%2Fapi%2Fping&view=all"
    ));
    assert!(attacks.contains("<tr data-id=\"cmd\""), "{attacks}");

    // The filters narrow the list, as the form submits them.
    let narrowed = |query: &str| endpoints(&dom(&format!("{base}/apis?{query}")));
    assert_eq!(
        narrowed("host=&method=post&path=&sensitive=&spec="),
        ["POST /api/comments", "POST /api/ping"]
    );
    assert_eq!(
        narrowed("path=%2Fapi%2Fusers"),
        [
            "GET /api/users/{user_id}",
            "GET /api/users/{user_id}/profile"
        ]
    );
    assert_eq!(
        narrowed("sensitive=card"),
        ["GET /api/users/{user_id}/profile"]
    );
    assert!(narrowed("host=elsewhere.example.com").is_empty());
    let bad = dom(&format!("{base}/apis?sensitive=dna"));
    assert!(bad.contains("Not a filter: sensitive"), "{bad}");

    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
