//! The counted set: interfaces whose ingress program counts packets, which
//! the egress program skips (see `attach` for why).
//!
//! Indexes below [`COUNTED_BITS_LIMIT`] are bits of the [`COUNTED_BITS`]
//! array, the others keys of the [`COUNTED_INTERFACES`] hash map. The agent
//! is the only writer, so it keeps a copy of the words and writes a changed
//! word whole; a reader that sees a half-written word still sees every other
//! bit right, since only one bit differs.
//!
//! An index below the limit is never looked up in the hash map, but an agent
//! before the bit array kept every index there: after the first attach over
//! its pins, [`CountedSet::forget_low_keys`] drops those keys.

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use flow_common::{
    COUNTED_BITS, COUNTED_BITS_LIMIT, COUNTED_BITS_WORDS, COUNTED_INTERFACES, counted_bit,
};

use super::DatapathError;

/// Both maps of the counted set, and the words of the bit array as written.
pub(super) struct CountedSet {
    bits: Array<MapData, u64>,
    words: Vec<u64>,
    high: BpfHashMap<MapData, u32, u8>,
}

fn map_error(operation: &'static str, map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        operation,
        map,
        source: Box::new(source),
    }
}

impl CountedSet {
    /// Takes both maps; the bit array's words are read, as a pinned array
    /// holds an earlier agent's set.
    pub(super) fn new(
        bits: Array<MapData, u64>,
        high: BpfHashMap<MapData, u32, u8>,
    ) -> Result<Self, DatapathError> {
        let words = (0..COUNTED_BITS_WORDS)
            .map(|word| bits.get(&word, 0).map_err(map_error("read", COUNTED_BITS)))
            .collect::<Result<_, _>>()?;
        Ok(Self { bits, words, high })
    }

    /// Adds an interface to the set.
    pub(super) fn insert(&mut self, index: u32) -> Result<(), DatapathError> {
        match counted_bit(index) {
            Some((word, mask)) => self.write_word(word, |bits| bits | mask),
            None => self
                .high
                .insert(index, 1, 0)
                .map_err(map_error("insert", COUNTED_INTERFACES)),
        }
    }

    /// Takes an interface out of the set; one that was not in it is an error
    /// only for the hash map, which says so.
    pub(super) fn remove(&mut self, index: u32) -> Result<(), DatapathError> {
        match counted_bit(index) {
            Some((word, mask)) => self.write_word(word, |bits| bits & !mask),
            None => self
                .high
                .remove(&index)
                .map_err(map_error("remove", COUNTED_INTERFACES)),
        }
    }

    /// Every interface in the set, in index order.
    pub(super) fn indexes(&self) -> Vec<u32> {
        let mut indexes: Vec<u32> = (0..COUNTED_BITS_LIMIT)
            .filter(|&index| {
                counted_bit(index).is_some_and(|(word, mask)| {
                    self.words
                        .get(word as usize)
                        .is_some_and(|bits| bits & mask != 0)
                })
            })
            .collect();
        let mut high: Vec<u32> = self.high.keys().filter_map(Result::ok).collect();
        high.sort_unstable();
        indexes.extend(
            high.into_iter()
                .filter(|&index| index >= COUNTED_BITS_LIMIT),
        );
        indexes
    }

    /// Drops hash-map keys below the limit, which only an agent from before
    /// the bit array writes and no program of this agent reads.
    pub(super) fn forget_low_keys(&mut self) {
        let low: Vec<u32> = self
            .high
            .keys()
            .filter_map(Result::ok)
            .filter(|&index| index < COUNTED_BITS_LIMIT)
            .collect();
        for index in low {
            let _ = self.high.remove(&index);
        }
    }

    fn write_word(
        &mut self,
        word: u32,
        change: impl FnOnce(u64) -> u64,
    ) -> Result<(), DatapathError> {
        let Some(bits) = self.words.get_mut(word as usize) else {
            return Ok(());
        };
        let new = change(*bits);
        if new != *bits {
            self.bits
                .set(word, new, 0)
                .map_err(map_error("write", COUNTED_BITS))?;
            *bits = new;
        }
        Ok(())
    }
}
