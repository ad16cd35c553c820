//! Human or JSON output, and logging setup.

use serde_json::{json, Value};

/// Where results and events go, in the chosen format.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// A result line on stdout: `human` text, or the JSON object `value`.
    pub fn result(&self, human: impl AsRef<str>, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human.as_ref());
        }
    }

    /// An event line on stderr (for commands whose stdout carries data).
    pub fn event(&self, human: impl AsRef<str>, value: Value) {
        if self.json {
            eprintln!("{value}");
        } else {
            eprintln!("{}", human.as_ref());
        }
    }
}

/// Builds a JSON object with an `event` field.
pub fn ev(name: &str, mut fields: Value) -> Value {
    if let Value::Object(m) = &mut fields {
        m.insert("event".into(), json!(name));
    }
    fields
}

/// Logs to stderr; `RUST_LOG` overrides the level.
pub fn init_logs(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}
