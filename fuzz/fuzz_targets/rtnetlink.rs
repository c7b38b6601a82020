//! An rtnetlink buffer (a link dump or notifications) parsed as the
//! interface watcher parses it: nothing panics, and no message is smaller
//! than a netlink header.
#![no_main]

use flow_agent::interfaces::{Message, parse_messages};
use libfuzzer_sys::fuzz_target;

/// `struct nlmsghdr`.
const HEADER: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = parse_messages(data) else {
        return;
    };
    assert!(messages.len() <= data.len() / HEADER);
    for message in &messages {
        if let Message::Link { link, .. } = message {
            assert!(link.name.len() < data.len());
        }
    }
});
