//! Rewrites checked byte for byte.
