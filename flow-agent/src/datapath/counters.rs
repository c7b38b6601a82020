//! The datapath's counters (see [`Counter`]), summed over CPUs.

use flow_common::{COUNTERS, Counter};

use super::{Datapath, DatapathError};

/// Datapath counters, summed over CPUs. See [`Counter`] for their meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters(pub [u64; Counter::COUNT as usize]);

impl DatapathCounters {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        let Self(values) = self;
        values[counter as usize]
    }

    /// What each counter added since `baseline` (pinned counters carry an
    /// earlier agent's totals).
    pub fn since(&self, baseline: &Self) -> Self {
        let mut values = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            values[counter as usize] = self.get(counter).saturating_sub(baseline.get(counter));
        }
        Self(values)
    }

    /// Counters that grew since `earlier`, with the increase.
    pub fn increase_since(&self, earlier: &Self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .filter_map(|&counter| {
                let delta = self.get(counter).saturating_sub(earlier.get(counter));
                (delta > 0).then_some((counter, delta))
            })
            .collect()
    }
}

impl Datapath {
    /// Datapath counters summed over CPUs.
    pub fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut totals = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let values =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        operation: "read",
                        map: COUNTERS,
                        source: Box::new(source),
                    })?;
            totals[counter as usize] = values.iter().sum();
        }
        Ok(DatapathCounters(totals))
    }

    /// Flows inserted into the flow maps so far, summed over CPUs (pinned
    /// counters include earlier agents').
    pub(super) fn inserted(&self) -> Result<u64, DatapathError> {
        let values = self
            .counters
            .get(&(Counter::Inserted as u32), 0)
            .map_err(|source| DatapathError::Map {
                operation: "read",
                map: COUNTERS,
                source: Box::new(source),
            })?;
        Ok(values.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_increases_are_reported_per_counter() {
        let mut earlier = [0u64; Counter::COUNT as usize];
        earlier[Counter::MapFull as usize] = 5;
        let mut now = earlier;
        now[Counter::MapFull as usize] = 8;
        now[Counter::Lost as usize] = 1;
        let increases = DatapathCounters(now).increase_since(&DatapathCounters(earlier));
        assert_eq!(increases, [(Counter::MapFull, 3), (Counter::Lost, 1)]);
        // Since a pinned baseline: this agent's share only, never negative.
        let since = DatapathCounters(now).since(&DatapathCounters(earlier));
        assert_eq!(
            (
                since.get(Counter::MapFull),
                since.get(Counter::Lost),
                since.get(Counter::Inserted)
            ),
            (3, 1, 0)
        );
        assert_eq!(
            DatapathCounters(earlier)
                .since(&DatapathCounters(now))
                .get(Counter::MapFull),
            0
        );
    }
}
