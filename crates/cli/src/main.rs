//! `circuit`: a libp2p circuit relay and its peer-side tools.

mod commands;
mod config;
mod output;
mod web;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A libp2p Circuit Relay v2 node: run a relay, or reach peers through one.
///
/// Peers behind NATs (or in browsers) reserve a slot on a relay and become reachable at
/// `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>`. Traffic is end-to-end encrypted
/// (Noise); the relay only forwards ciphertext.
#[derive(Parser, Debug)]
#[command(name = "circuit", version, propagate_version = true)]
struct Cli {
    /// One JSON object per line instead of human-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; the relay's many options make its variant large, which is fine.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a relay: serve circuit relay v2 (hop), identify and ping.
    ///
    /// Prints the PeerId, then one full address per line on stdout
    /// (`…/p2p/<id>`; port 0 becomes the real port, 0.0.0.0/:: the interface addresses).
    Relay(commands::relay::Args),
    /// Reserve a slot on relays and accept relayed connections (like `nc -l`).
    ///
    /// Serves ping, perf and `/circuit/pipe/1.0.0`: an incoming pipe stream is joined to
    /// stdin/stdout. Addresses, events and logs go to stderr.
    Listen(commands::listen::Args),
    /// Connect to a peer (directly or through a relay) and join a pipe stream to stdin/stdout.
    Dial(commands::dial::Args),
    /// Ping a peer, like ping(8).
    Ping(commands::ping::Args),
    /// Measure throughput to a peer with the libp2p perf protocol.
    Perf(commands::perf::Args),
    /// Run a DHT node: a Kademlia and AutoNAT server to bootstrap from (no relaying).
    Dht(commands::dht::Args),
    /// Print the PeerId of an identity file (created if missing).
    Id(IdArgs),
}

/// Applies `CIRCUIT_AEAD` (`openssl` or `ring`): the ChaCha20-Poly1305 implementation of
/// the Noise transport. Unset, the fastest built in is used (OpenSSL's libcrypto).
fn choose_aead() -> Result<(), String> {
    use circuit_proto::noise::aead::{self, Implementation};
    let Ok(want) = std::env::var("CIRCUIT_AEAD") else {
        return Ok(());
    };
    let names: Vec<&str> = Implementation::available()
        .iter()
        .map(|i| i.name())
        .collect();
    let imp = Implementation::from_name(want.trim()).ok_or_else(|| {
        format!(
            "CIRCUIT_AEAD={want:?} is not an implementation; use one of: {}",
            names.join(", ")
        )
    })?;
    aead::set_implementation(imp).map_err(|e| format!("CIRCUIT_AEAD={want:?}: {e}"))?;
    tracing::debug!(aead = %imp, "ChaCha20-Poly1305 implementation chosen by CIRCUIT_AEAD");
    Ok(())
}

#[derive(clap::Args, Debug)]
struct IdArgs {
    /// Identity key file (libp2p protobuf encoding); created with mode 0600 if missing.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Relay(_) | Command::Dht(_) => "info",
        _ => "warn",
    };
    output::init_logs(default_level, cli.json);
    if let Err(e) = choose_aead() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = output::Output::new(cli.json);
    let result = rt.block_on(async {
        match cli.command {
            Command::Relay(a) => commands::relay::run(a, out).await,
            Command::Listen(a) => commands::listen::run(a, out).await,
            Command::Dial(a) => commands::dial::run(a, out).await,
            Command::Ping(a) => commands::ping::run(a, out).await,
            Command::Perf(a) => commands::perf::run(a, out).await,
            Command::Dht(a) => commands::dht::run(a, out).await,
            Command::Id(a) => commands::id(a.identity, out),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
