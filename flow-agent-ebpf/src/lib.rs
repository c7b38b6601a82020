//! This library target exists only so that `flow-agent` can name this crate as a
//! build dependency (which makes cargo rebuild the agent when the programs change);
//! the programs themselves are the binaries.
#![no_std]
