//! A flow file (our JSON records and Hubble's JSON, one per line) read as
//! `flow-policy` reads it: nothing panics, each line yields at most one
//! record, and our records survive a write and a second read unchanged.
#![no_main]

use std::path::Path;

use flow_policy::flowfile::{Tenancy, read_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tenancy = Tenancy::new("tenant");
    let Ok(flows) = read_from(data, Path::new("fuzz.jsonl"), &tenancy) else {
        return;
    };
    let lines = data.split(|&byte| byte == b'\n').count();
    assert!(flows.records.len() + flows.skipped <= lines);
    // Written back in our format, every record reads back as itself.
    let mut written = Vec::new();
    for record in &flows.records {
        let line = serde_json::to_vec(record).expect("a record serializes");
        written.extend_from_slice(&line);
        written.push(b'\n');
    }
    let again = read_from(written.as_slice(), Path::new("again.jsonl"), &tenancy)
        .expect("a written record reads back");
    assert_eq!(again.records, flows.records);
    assert_eq!(again.skipped, 0);
});
