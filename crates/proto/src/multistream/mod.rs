//! multistream (in progress)
