//! yamux (in progress)
