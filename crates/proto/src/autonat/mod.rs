//! AutoNAT v1 (placeholder while the core is written).
