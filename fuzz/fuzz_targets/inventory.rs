//! An inventory file (`kubectl get ... -o yaml`, a multi-document stream or
//! JSON) read as `--inventory` reads it: nothing panics, every document is
//! accounted for, and the events that replace the cache hold every object
//! between one resync start and one resync done per kind.
#![no_main]

use flow_model::identity::{CacheEvent, ObjectKind, inventory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read = inventory::parse(text, "fuzz.yaml");
    let objects = read.objects.len();
    if read.incomplete().is_none() {
        assert!(objects > 0);
    }
    let events = read.into_events();
    let kinds = ObjectKind::ALL.len();
    assert_eq!(events.len(), objects + 2 * kinds);
    assert!(matches!(events.first(), Some(CacheEvent::ResyncStart(_))));
    assert!(matches!(events.last(), Some(CacheEvent::ResyncDone(_))));
});
