//! A ctnetlink answer to a conntrack GET parsed as the Service translation
//! parses it: nothing panics, and a short message is an error.
#![no_main]

use flow_agent::conntrack::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let answer = parse_answer(data);
    if data.len() < 16 {
        assert!(answer.is_err());
    }
});
