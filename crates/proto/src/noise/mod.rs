//! noise (in progress)
