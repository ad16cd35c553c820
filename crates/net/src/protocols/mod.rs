//! Built-in protocols served and used by every node: identify, ping, perf.

pub mod identify;
pub mod perf;
pub mod ping;
