use std::net::Ipv4Addr;

use super::*;

const POD_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
const POD_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3));
const VAULT: IpAddr = IpAddr::V4(Ipv4Addr::new(20, 42, 65, 92));

fn answer(address: IpAddr, ttl: u32, names: &[&str]) -> Resolved {
    Resolved {
        address,
        ttl,
        names: names.iter().map(|name| name.to_string()).collect(),
    }
}

fn config(max_entries: usize, max_names_per_address: usize) -> NameCacheConfig {
    NameCacheConfig {
        max_entries,
        max_names_per_address,
        grace: Duration::from_secs(10),
    }
}

fn names(cache: &NameCache, querier: IpAddr, address: IpAddr, now: Instant) -> Vec<String> {
    cache
        .lookup(querier, address, now)
        .iter()
        .map(|name| name.to_string())
        .collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_name_lives_for_its_ttl_and_the_grace_then_goes() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(100, 8));
    cache.insert(
        POD_A,
        &answer(VAULT, 30, &["www.vault.example", "vault.cdn.example"]),
        start,
    );
    let both = ["vault.cdn.example", "www.vault.example"];
    assert_eq!(names(&cache, POD_A, VAULT, start), both);
    assert_eq!(names(&cache, POD_A, VAULT, start + secs(40)), both);
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(41)),
        Vec::<String>::new()
    );
    // Per querier: another pod never resolved it.
    assert_eq!(names(&cache, POD_B, VAULT, start), Vec::<String>::new());
    cache.expire(start + secs(40));
    assert_eq!(cache.stats().entries, 2);
    cache.expire(start + secs(41));
    assert_eq!(
        cache.stats(),
        NameCacheStats {
            entries: 0,
            answers: 1,
            expired: 2,
            ..NameCacheStats::default()
        }
    );
}

#[test]
fn ttl_zero_lives_for_the_grace_period_and_is_counted() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(100, 8));
    cache.insert(POD_A, &answer(VAULT, 0, &["once.example"]), start);
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(10)),
        ["once.example"]
    );
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(11)),
        Vec::<String>::new()
    );
    assert_eq!(cache.stats().ttl_zero, 1);
}

#[test]
fn a_reused_address_is_attributed_to_its_new_name_only() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(100, 8));
    cache.insert(POD_A, &answer(VAULT, 30, &["old.example"]), start);
    // Still within its TTL, a second name shares the address.
    cache.insert(
        POD_A,
        &answer(VAULT, 30, &["shared.example"]),
        start + secs(5),
    );
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(6)),
        ["old.example", "shared.example"]
    );
    // After both TTLs, within the grace, the address is handed to a new name.
    cache.insert(
        POD_A,
        &answer(VAULT, 30, &["new.example"]),
        start + secs(36),
    );
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(36)),
        ["new.example"]
    );
    assert_eq!(cache.stats().replaced, 2);
    assert_eq!(cache.stats().entries, 1);
}

#[test]
fn an_answer_again_refreshes_the_name() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(100, 8));
    cache.insert(POD_A, &answer(VAULT, 30, &["api.example"]), start);
    cache.insert(
        POD_A,
        &answer(VAULT, 30, &["api.example"]),
        start + secs(35),
    );
    assert_eq!(
        names(&cache, POD_A, VAULT, start + secs(75)),
        ["api.example"]
    );
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(cache.stats().replaced, 0);
}

#[test]
fn the_oldest_entry_goes_first_when_the_cache_is_full() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(3, 8));
    for (i, name) in ["a.example", "b.example", "c.example", "d.example"]
        .iter()
        .enumerate()
    {
        let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, u8::try_from(i).unwrap_or(0)));
        cache.insert(POD_A, &answer(address, 60, &[name]), start);
    }
    let first = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0));
    let last = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(names(&cache, POD_A, first, start), Vec::<String>::new());
    assert_eq!(names(&cache, POD_A, last, start), ["d.example"]);
    assert_eq!(cache.stats().entries, 3);
    assert_eq!(cache.stats().evicted_full, 1);
}

#[test]
fn ten_thousand_names_for_one_address_keep_the_newest_within_the_limit() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(100_000, 64));
    for i in 0..10_000 {
        let name = format!("site{i}.cdn.example");
        cache.insert(POD_A, &answer(VAULT, 300, &[&name]), start);
    }
    let kept = names(&cache, POD_A, VAULT, start);
    let mut newest: Vec<String> = (10_000 - 64..10_000)
        .map(|i| format!("site{i}.cdn.example"))
        .collect();
    newest.sort();
    assert_eq!(kept, newest);
    assert_eq!(cache.stats().entries, 64);
    assert_eq!(cache.stats().evicted_address_limit, 10_000 - 64);
}

#[test]
fn a_cache_of_size_zero_keeps_nothing() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(0, 8));
    cache.insert(POD_A, &answer(VAULT, 60, &["a.example"]), start);
    assert_eq!(names(&cache, POD_A, VAULT, start), Vec::<String>::new());
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn a_name_resolved_by_many_pods_is_held_once_until_its_last_entry_goes() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(3, 8));
    cache.insert(POD_A, &answer(VAULT, 30, &["vault.example"]), start);
    cache.insert(POD_B, &answer(VAULT, 60, &["vault.example"]), start);
    let a = cache.lookup(POD_A, VAULT, start);
    let b = cache.lookup(POD_B, VAULT, start);
    assert!(Arc::ptr_eq(&a[0], &b[0]));
    assert_eq!(cache.interned.len(), 1);
    drop((a, b));
    // POD_A's entry expires; POD_B still holds the name.
    cache.expire(start + secs(41));
    assert_eq!(
        names(&cache, POD_B, VAULT, start + secs(41)),
        ["vault.example"]
    );
    assert_eq!(cache.interned.len(), 1);
    // Evicted when full, replaced, expired: each drop releases the name.
    cache.insert(
        POD_A,
        &answer(VAULT, 30, &["a.example", "b.example", "c.example"]),
        start + secs(42),
    );
    assert_eq!(cache.stats().entries, 3);
    assert_eq!(
        names(&cache, POD_B, VAULT, start + secs(42)),
        Vec::<String>::new()
    );
    assert_eq!(cache.interned.len(), 3);
    cache.expire(start + secs(200));
    assert_eq!((cache.stats().entries, cache.interned.len()), (0, 0));
}

#[test]
fn an_answer_between_seconds_never_ends_early() {
    let start = Instant::now();
    let mut cache = NameCache::new(config(10, 8));
    cache.insert(POD_A, &answer(VAULT, 1, &["first.example"]), start);
    let later = start + Duration::from_millis(1_500);
    cache.insert(POD_B, &answer(VAULT, 5, &["half.example"]), later);
    // TTL 5 and grace 10 from 1.5 s: alive at 16.5 s at least.
    assert_eq!(
        names(&cache, POD_B, VAULT, start + Duration::from_millis(16_500)),
        ["half.example"]
    );
    assert_eq!(
        names(&cache, POD_B, VAULT, start + secs(18)),
        Vec::<String>::new()
    );
}
