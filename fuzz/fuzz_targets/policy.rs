//! A policy file (NetworkPolicies, multi-document YAML, `List`s, JSON) read
//! as `flow-policy check` and `monitor` read it: nothing panics, and every
//! policy that loads comes from a document of the file.
#![no_main]

use std::path::Path;

use flow_policy::load::read_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = read_text(Path::new("fuzz.yaml"), text);
    for policy in &loaded.policies {
        assert!(policy.document >= 1);
        assert_eq!(policy.file, Path::new("fuzz.yaml"));
    }
    for skipped in &loaded.skipped {
        assert!(skipped.document >= 1);
    }
});
