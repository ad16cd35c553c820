//! `circuit-delayline`: joins two TAP devices in two network namespaces with a fixed
//! one-way delay each way. Used by `tests/netbed/netbed.sh`; see the crate docs.
//!
//! ```sh
//! circuit-delayline --a-netns cb-pub --a-tap tap-r1 --b-netns cb-r1 --b-tap eth0 --delay-ms 15
//! ```
//!
//! Both interfaces exist while the process runs and vanish when it exits; the caller
//! configures them (`ip link set up`, addresses, bridge ports) after `--ready-file` appears.

use circuit_delayline::line::{spawn_direction, DirectionConfig, FrameIo};
use circuit_delayline::tap::{netns_path, open_tap_in_netns};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

/// Forward Ethernet frames between two TAP devices after a fixed delay.
#[derive(Parser, Debug)]
#[command(name = "circuit-delayline", version)]
struct Args {
    /// Namespace of side A: a name under /var/run/netns, or a path.
    #[arg(long)]
    a_netns: String,
    /// TAP interface to create in side A's namespace.
    #[arg(long)]
    a_tap: String,
    /// Namespace of side B: a name under /var/run/netns, or a path.
    #[arg(long)]
    b_netns: String,
    /// TAP interface to create in side B's namespace.
    #[arg(long)]
    b_tap: String,
    /// One-way delay in milliseconds, applied in both directions.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Override the A→B delay (ms).
    #[arg(long)]
    delay_a_to_b_ms: Option<u64>,
    /// Override the B→A delay (ms).
    #[arg(long)]
    delay_b_to_a_ms: Option<u64>,
    /// Frames queued per direction before new ones are dropped.
    #[arg(long, default_value_t = 8192)]
    queue_frames: usize,
    /// Print counters to stderr every N seconds when they changed (0 = never).
    #[arg(long, default_value_t = 0)]
    stats_secs: u64,
    /// File to create once both TAPs exist (for scripts to wait on).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("circuit-delayline: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let a = open_tap_in_netns(&netns_path(&args.a_netns), &args.a_tap)?;
    let b = open_tap_in_netns(&netns_path(&args.b_netns), &args.b_tap)?;
    let a: Arc<dyn FrameIo> = Arc::new(a);
    let b: Arc<dyn FrameIo> = Arc::new(b);

    let ab = Duration::from_millis(args.delay_a_to_b_ms.unwrap_or(args.delay_ms));
    let ba = Duration::from_millis(args.delay_b_to_a_ms.unwrap_or(args.delay_ms));
    let q = args.queue_frames;
    let fwd = spawn_direction(
        "a2b",
        Arc::clone(&a),
        Arc::clone(&b),
        DirectionConfig {
            delay: ab,
            queue_frames: q,
        },
    )?;
    let back = spawn_direction(
        "b2a",
        b,
        a,
        DirectionConfig {
            delay: ba,
            queue_frames: q,
        },
    )?;

    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
    }
    eprintln!(
        "circuit-delayline: {}:{} <-> {}:{}  a->b {} ms, b->a {} ms, queue {q} frames",
        args.a_netns,
        args.a_tap,
        args.b_netns,
        args.b_tap,
        ab.as_millis(),
        ba.as_millis()
    );

    // The TAP readers never see an end; the process runs until it is killed.
    let mut last = String::new();
    loop {
        if args.stats_secs == 0 {
            std::thread::park();
            continue;
        }
        std::thread::sleep(Duration::from_secs(args.stats_secs));
        let now = format!("a2b {} | b2a {}", fwd.stats.summary(), back.stats.summary());
        if now != last {
            eprintln!("circuit-delayline: {now}");
            last = now;
        }
    }
}
