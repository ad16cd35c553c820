//! Built-in protocols served and used by every node: identify, ping, perf.

pub mod autonat;
pub mod identify;
pub mod kad;
pub mod perf;
pub mod ping;
