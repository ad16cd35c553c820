//! Wire formats of circuit: pure functions and plain data, no I/O and no state.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod envelope;
pub mod frame;
pub mod keys;
pub mod pb;
pub mod record;
pub mod varint;
