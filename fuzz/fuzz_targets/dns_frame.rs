//! A frame as the datapath copies it, read down to its DNS messages, and
//! their answers taken into a small name cache: nothing panics, and the
//! cache's limits hold whatever the bytes say.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use flow_dns::{DnsMessage, NameCache, NameCacheConfig, frame};
use libfuzzer_sys::fuzz_target;

const CONFIG: NameCacheConfig = NameCacheConfig {
    max_entries: 32,
    max_names_per_address: 4,
    grace: Duration::from_secs(5),
};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut cache = NameCache::new(CONFIG);
    // The bytes as a bare DNS message, and as a whole frame.
    let mut messages = vec![data];
    let mut querier = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Ok(segment) = frame::read(data) {
        let (whole, rest) = segment.messages();
        assert!(rest <= segment.payload.len());
        querier = segment.destination;
        messages.extend(whole);
    }
    for bytes in messages {
        let Ok(message) = DnsMessage::read(bytes) else {
            continue;
        };
        for resolved in &message.resolved {
            assert!(!resolved.names.is_empty());
            assert!(resolved.names.len() <= flow_dns::message::MAX_NAMES_PER_ADDRESS);
            cache.insert(querier, resolved, now);
            let names = cache.lookup(querier, resolved.address, now);
            assert!(names.len() <= CONFIG.max_names_per_address);
        }
    }
    assert!(cache.stats().entries <= CONFIG.max_entries);
    cache.expire(now + Duration::from_secs(u64::from(u32::MAX) + 10));
    assert_eq!(cache.stats().entries, 0);
});
