//! Helpers shared by the process-level tests: a child process whose output lines
//! are collected, waited for with deadlines, and killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The `circuit` binary under test.
pub fn circuit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_circuit"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `path`, if it exists. A missing test peer fails the test under `CI=true` (a skip there
/// would hide a broken setup); elsewhere the test is skipped with a note saying what to run.
pub fn require(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    missing(format!(
        "{what} missing at {}: run ./test.sh (or see interop/*/README.md) to build it",
        path.display()
    ))
}

/// Something a test needs is not installed (`msg` says what and how to get it): a failure
/// under `CI=true`, a skip (`None`, with a note) elsewhere.
pub fn missing<T>(msg: String) -> Option<T> {
    if std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
    {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The rust-libp2p test peer (interop/rust-libp2p-peer), if built.
pub fn rust_peer() -> Option<PathBuf> {
    require(
        root().join("interop/rust-libp2p-peer/target/release/rust-libp2p-peer"),
        "rust-libp2p test peer",
    )
}

/// A fresh path in the temp dir.
pub fn tmp(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "circuit-test-{}-{nanos}-{name}",
        std::process::id()
    ))
}

/// A child process whose stdout and stderr lines are collected; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: Receiver<(bool, String)>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `program args`, with its own data dir.
    pub fn spawn(name: &str, program: &PathBuf, args: &[&str]) -> Proc {
        Self::spawn_with_stdin(name, program, args, None)
    }

    /// Like [`Proc::spawn`], writing `stdin` to the process (then closing it).
    pub fn spawn_with_stdin(
        name: &str,
        program: &PathBuf,
        args: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        cmd.env("XDG_DATA_HOME", tmp("data"));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({}): {e}", program.display()));
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        let (tx, rx) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((true, l));
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send((false, l));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line (stdout, or stderr when `stderr`) that `matches`; returns it.
    pub fn expect_with(
        &mut self,
        what: &str,
        stderr: bool,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_out, line)) => {
                    self.seen
                        .push(format!("{}{line}", if is_out { "out: " } else { "err: " }));
                    if is_out != stderr && matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no line {what} within {timeout:?}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a line starting with `prefix`; returns the rest, trimmed.
    pub fn expect(&mut self, prefix: &str, stderr: bool, timeout: Duration) -> String {
        let line = self.expect_with(&format!("starting with {prefix:?}"), stderr, timeout, |l| {
            l.starts_with(prefix)
        });
        line[prefix.len()..].trim().to_string()
    }

    /// Waits for a line containing `needle`; returns the whole line.
    pub fn expect_line(&mut self, needle: &str, stderr: bool, timeout: Duration) -> String {
        self.expect_with(&format!("containing {needle:?}"), stderr, timeout, |l| {
            l.contains(needle)
        })
    }

    /// Sends a signal (`TERM`, `HUP`, …).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Drops the output lines received so far (a long-running process's logs would
    /// otherwise pile up in this process); returns how many.
    pub fn discard_output(&mut self) -> usize {
        let mut n = 0;
        while self.lines.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    /// Waits for exit; returns the exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                while let Ok((_, l)) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                panic!(
                    "{} did not exit within {timeout:?}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for exit; returns the exit code and every stdout line.
    pub fn finish(mut self, timeout: Duration) -> (i32, Vec<String>) {
        let code = self.wait(timeout);
        std::thread::sleep(Duration::from_millis(100));
        while let Ok((is_out, l)) = self.lines.try_recv() {
            self.seen
                .push(format!("{}{l}", if is_out { "out: " } else { "err: " }));
        }
        let out = self
            .seen
            .iter()
            .filter_map(|l| l.strip_prefix("out: ").map(str::to_string))
            .collect();
        (code, out)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
