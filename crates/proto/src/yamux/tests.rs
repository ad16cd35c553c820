//! Tests: two sessions wired back to back.
