//! The names each pod resolved to each address, for as long as the answers
//! allow.
//!
//! Keys are (querier, address): the querier is the pod the answer was sent
//! to, so one tenant's lookups never name another tenant's flows, and two
//! pods that resolved different names to one shared CDN address each see
//! their own. An entry lives for its answer's TTL plus
//! [`NameCacheConfig::grace`], since a connection often opens just as a
//! short TTL runs out; TTL 0 still lives for the grace period.
//!
//! Invariants:
//! - at most [`NameCacheConfig::max_entries`] (querier, address, name)
//!   entries; past it, the oldest written goes first;
//! - at most [`NameCacheConfig::max_names_per_address`] names per (querier,
//!   address); past it, that address's oldest name goes first;
//! - an answer for an address drops the names of that address whose TTL has
//!   run out (those only in their grace period), so a reused address is
//!   attributed to its new name only.
//!
//! Memory: each name is held once however many pods resolved it, an
//! address with one name needs no allocation of its own, and times are kept
//! in whole seconds from the cache's creation, rounded so that an entry
//! never ends before its TTL and grace.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use smallvec::SmallVec;

use crate::message::Resolved;

/// How much the cache keeps, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameCacheConfig {
    /// Entries (querier, address, name) kept at most.
    pub max_entries: usize,
    /// Names kept at most per (querier, address).
    pub max_names_per_address: usize,
    /// How long a name outlives its TTL.
    pub grace: Duration,
}

impl Default for NameCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_names_per_address: 64,
            grace: Duration::from_secs(120),
        }
    }
}

/// What the cache did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameCacheStats {
    /// Entries held now.
    pub entries: usize,
    /// Answers (one address with its names) taken in.
    pub answers: u64,
    /// Answers whose TTL was 0.
    pub ttl_zero: u64,
    /// Entries dropped because the cache was full (oldest first).
    pub evicted_full: u64,
    /// Entries dropped because their address had too many names.
    pub evicted_address_limit: u64,
    /// Entries dropped because a new answer for their address came after
    /// their TTL ran out.
    pub replaced: u64,
    /// Entries dropped when their TTL and grace ran out.
    pub expired: u64,
}

type Pair = (IpAddr, IpAddr);

#[derive(Clone, Debug)]
struct Entry {
    name: Arc<str>,
    /// Order of writing: the smallest goes first when the cache is full.
    seq: u64,
    /// When the TTL runs out, in seconds from the cache's epoch (rounded
    /// up); the grace period follows.
    expires: u32,
}

/// The names of one (querier, address): most often one, held inline.
type Entries = SmallVec<[Entry; 1]>;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct NameCache {
    config: NameCacheConfig,
    /// Where the cache's seconds count from: its first answer.
    epoch: Option<Instant>,
    /// [`NameCacheConfig::grace`] in seconds, rounded up.
    grace: u32,
    by_pair: HashMap<Pair, Entries>,
    /// Every name held, once.
    interned: HashSet<Arc<str>>,
    /// Every entry by its `seq`, oldest first.
    order: BTreeMap<u64, Pair>,
    next_seq: u64,
    stats: NameCacheStats,
}

impl NameCache {
    /// An empty cache. A `max_entries` or `max_names_per_address` of 0 keeps
    /// nothing.
    pub fn new(config: NameCacheConfig) -> Self {
        Self {
            config,
            epoch: None,
            grace: seconds_up(config.grace),
            by_pair: HashMap::new(),
            interned: HashSet::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            stats: NameCacheStats::default(),
        }
    }

    /// What the cache did so far.
    pub fn stats(&self) -> NameCacheStats {
        NameCacheStats {
            entries: self.order.len(),
            ..self.stats
        }
    }

    /// Whether no name is held: lookups then find nothing.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Takes in an answer that `querier` received at `now`.
    pub fn insert(&mut self, querier: IpAddr, resolved: &Resolved, now: Instant) {
        self.stats.answers += 1;
        if resolved.ttl == 0 {
            self.stats.ttl_zero += 1;
        }
        let pair = (querier, resolved.address);
        let epoch = *self.epoch.get_or_insert(now);
        // Rounded up, so that the entry never ends early.
        let now_up = seconds_up(now.saturating_duration_since(epoch));
        let expires = now_up.saturating_add(resolved.ttl);
        let now = self.seconds(now);
        self.drop_run_out(pair, resolved, now);
        for name in &resolved.names {
            self.write(pair, name, expires);
            self.keep_address_limit(pair);
        }
        self.keep_size_limit();
    }

    /// The names `querier` resolved to `address` that are still alive at
    /// `now`, sorted.
    pub fn lookup(&self, querier: IpAddr, address: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let Some(entries) = self.by_pair.get(&(querier, address)) else {
            return Vec::new();
        };
        let now = self.seconds(now);
        let mut names: Vec<Arc<str>> = entries
            .iter()
            .filter(|entry| self.alive(entry, now))
            .map(|entry| Arc::clone(&entry.name))
            .collect();
        names.sort();
        names
    }

    /// Drops every entry whose TTL and grace ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        let now = self.seconds(now);
        let grace = self.grace;
        let Self {
            by_pair,
            order,
            interned,
            ..
        } = self;
        let mut expired = 0;
        by_pair.retain(|_, entries| {
            entries.retain(|entry| {
                let alive = now <= entry.expires.saturating_add(grace);
                if !alive {
                    order.remove(&entry.seq);
                    release(interned, &entry.name);
                    expired += 1;
                }
                alive
            });
            !entries.is_empty()
        });
        self.stats.expired += expired;
    }

    /// Seconds from the epoch to `now`, rounded down: an entry whose end is
    /// rounded up is then never taken for dead before its time.
    fn seconds(&self, now: Instant) -> u32 {
        let since = self
            .epoch
            .map_or(Duration::ZERO, |epoch| now.saturating_duration_since(epoch));
        u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
    }

    fn alive(&self, entry: &Entry, now: u32) -> bool {
        now <= entry.expires.saturating_add(self.grace)
    }

    /// The one copy of `name`.
    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.interned.get(name) {
            Some(held) => Arc::clone(held),
            None => {
                let held: Arc<str> = name.into();
                self.interned.insert(Arc::clone(&held));
                held
            }
        }
    }

    /// Drops the names of `pair` past their TTL that the new answer does not
    /// repeat.
    fn drop_run_out(&mut self, pair: Pair, resolved: &Resolved, now: u32) {
        let Self {
            by_pair,
            order,
            interned,
            ..
        } = self;
        let Some(entries) = by_pair.get_mut(&pair) else {
            return;
        };
        let before = entries.len();
        entries.retain(|entry| {
            let keep =
                entry.expires >= now || resolved.names.iter().any(|name| **name == *entry.name);
            if !keep {
                order.remove(&entry.seq);
                release(interned, &entry.name);
            }
            keep
        });
        self.stats.replaced += (before - entries.len()) as u64;
    }

    /// Adds or refreshes one name, as the newest entry.
    fn write(&mut self, pair: Pair, name: &str, expires: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let known = self
            .by_pair
            .get_mut(&pair)
            .and_then(|entries| entries.iter_mut().find(|entry| *entry.name == *name));
        match known {
            Some(entry) => {
                self.order.remove(&entry.seq);
                entry.seq = seq;
                entry.expires = entry.expires.max(expires);
            }
            None => {
                let name = self.intern(name);
                self.by_pair
                    .entry(pair)
                    .or_default()
                    .push(Entry { name, seq, expires });
            }
        }
        self.order.insert(seq, pair);
    }

    fn keep_address_limit(&mut self, pair: Pair) {
        let Some(entries) = self.by_pair.get_mut(&pair) else {
            return;
        };
        while entries.len() > self.config.max_names_per_address {
            let Some(oldest) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, entry)| entry.seq)
                .map(|(index, _)| index)
            else {
                break;
            };
            let entry = entries.swap_remove(oldest);
            self.order.remove(&entry.seq);
            release(&mut self.interned, &entry.name);
            self.stats.evicted_address_limit += 1;
        }
        if entries.is_empty() {
            self.by_pair.remove(&pair);
        }
    }

    fn keep_size_limit(&mut self) {
        while self.order.len() > self.config.max_entries {
            let Some((seq, pair)) = self.order.pop_first() else {
                break;
            };
            if let Some(entries) = self.by_pair.get_mut(&pair) {
                let interned = &mut self.interned;
                entries.retain(|entry| {
                    let keep = entry.seq != seq;
                    if !keep {
                        release(interned, &entry.name);
                    }
                    keep
                });
                if entries.is_empty() {
                    self.by_pair.remove(&pair);
                }
            }
            self.stats.evicted_full += 1;
        }
    }
}

/// Forgets the interned copy of `name` once the entry about to drop it is
/// its last holder.
fn release(interned: &mut HashSet<Arc<str>>, name: &Arc<str>) {
    // The interner's copy and the entry's.
    if Arc::strong_count(name) <= 2 {
        interned.remove(name);
    }
}

/// `duration` in whole seconds, rounded up.
fn seconds_up(duration: Duration) -> u32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
