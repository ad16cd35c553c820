//! The circuit relay v2 service (`/libp2p/circuit/relay/0.2.0/hop`): a table of
//! reservations with limits, CONNECT handling through the stop protocol, and
//! the bridge that copies a circuit's bytes both ways under its limits.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bridge;
mod config;
pub mod metrics;
mod service;
mod table;

pub use bridge::{bridge, bridge_tapped, BridgeEnd, Direction, Tap, TapFn};
pub use config::{Acl, AclList, AclRule, RelayConfig};
pub use metrics::RelayMetrics;
pub use service::{Relay, RelayStats};
pub use table::{ReservationTable, TableError};
