//! The WAN workload's network: a relay behind a delay line and two hosts behind NAT, made
//! by the repository's test bed (`tests/netbed/netbed.sh`, namespaces prefixed `cbw-`),
//! so that a circuit crosses two hops with a real round trip instead of loopback's
//! microseconds. Window sizing and flow control only show there: on loopback every window
//! is large enough.
//!
//! Needs root (network namespaces), `ip`, nftables or iptables, `/dev/net/tun` and the
//! delay line (`target/release/circuit-delayline`); without them the workload is skipped
//! with a note.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, Context};

use crate::peers::Host;

/// Namespace prefix of the bed (the tests use `cbt-`/`cba-`, a bed made by hand `cb-`).
const PREFIX: &str = "cbw-";

/// A running bed; torn down when dropped.
pub struct Bed {
    script: PathBuf,
    env: Vec<(String, String)>,
    /// The relay's host (`cbw-r1`, 198.18.0.11), behind the delay line.
    pub relay: Host,
    /// The perf server's host, behind NAT router 1.
    pub server: Host,
    /// The perf client's host, behind NAT router 2.
    pub client: Host,
}

/// Why the bed cannot be made here (root, tools, the delay line), or `None` if it can be
/// tried.
pub fn unavailable(root: &Path, delayline: &Path) -> Option<String> {
    if !rustix::process::getuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    if !root.join("tests/netbed/netbed.sh").exists() {
        return Some("tests/netbed/netbed.sh not found".into());
    }
    if !delayline.exists() {
        return Some(format!(
            "{} not found: cargo build --release -p circuit-delayline",
            delayline.display()
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun not found (the delay line needs TAP devices)".into());
    }
    None
}

impl Bed {
    /// Builds the bed with `delay_ms` one-way on the relay's link (so each hop's round
    /// trip is twice that); state goes under `tmp`.
    pub async fn up(
        root: &Path,
        delayline: &Path,
        delay_ms: u64,
        tmp: &Path,
    ) -> anyhow::Result<Bed> {
        let env = vec![
            ("CB_PREFIX".to_string(), PREFIX.to_string()),
            ("CB_DELAYS".to_string(), delay_ms.to_string()),
            ("CB_DELAYLINE".to_string(), delayline.display().to_string()),
            (
                "CB_STATE_DIR".to_string(),
                tmp.join("netbed").display().to_string(),
            ),
        ];
        let bed = Bed {
            script: root.join("tests/netbed/netbed.sh"),
            env,
            relay: host("r1", "198.18.0.11"),
            server: host("nat1", "10.77.1.2"),
            client: host("nat2", "10.77.2.2"),
        };
        // A bed left over by a killed run would make `up` only print it; start clean.
        let _ = bed.run("down").await;
        let out = bed.run("up").await.context("running netbed.sh up")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            bail!("netbed.sh up failed ({}): {last}", out.status);
        }
        Ok(bed)
    }

    /// `netbed.sh <action>` with the bed's environment.
    fn command(&self, action: &str) -> std::process::Command {
        let mut c = std::process::Command::new("bash");
        c.arg(&self.script)
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        c
    }

    async fn run(&self, action: &str) -> std::io::Result<Output> {
        tokio::process::Command::from(self.command(action))
            .output()
            .await
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Synchronous: the bed must be gone before the harness exits.
        let _ = self
            .command("down")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn host(name: &str, ip: &str) -> Host {
    Host {
        netns: Some(format!("{PREFIX}{name}")),
        ip: ip.into(),
    }
}
