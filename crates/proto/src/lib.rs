//! Sans-IO protocol cores of circuit.
//!
//! Each module is a state machine: bytes and `Instant`s in; bytes, events and
//! deadlines out. Nothing here opens a socket, spawns a task or reads a clock.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod autonat;
pub mod autorelay;
pub mod kad;
pub mod multistream;
pub mod noise;
pub mod relay;
pub mod relay_v1;
pub mod yamux;
