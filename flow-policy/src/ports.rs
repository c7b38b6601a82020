//! Sets of ports, as NetworkPolicy rules allow them: unions of ranges within
//! 1..=65535, per protocol.

use std::fmt;

use flow_model::record::Protocol;

/// The protocols NetworkPolicy ports name.
pub const PROTOCOLS: [Protocol; 3] = [
    Protocol(flow_common::protocol::TCP),
    Protocol(flow_common::protocol::UDP),
    Protocol(flow_common::protocol::SCTP),
];

/// A set of ports: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// No port.
    pub const fn empty() -> Self {
        Self(Vec::new())
    }

    /// Every port, 1 to 65535.
    pub fn all() -> Self {
        Self(vec![(1, u16::MAX)])
    }

    /// `first..=last`; empty when `last < first`. Port 0 is never in a set.
    pub fn range(first: u16, last: u16) -> Self {
        let first = first.max(1);
        if last < first {
            Self::empty()
        } else {
            Self(vec![(first, last)])
        }
    }

    /// One port.
    pub fn single(port: u16) -> Self {
        Self::range(port, port)
    }

    /// Whether the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many ports the set holds.
    pub fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|(first, last)| u64::from(*last - *first) + 1)
            .sum()
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&port))
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Ports in either set.
    pub fn union(&self, other: &Self) -> Self {
        let mut ranges: Vec<(u16, u16)> = self.0.iter().chain(&other.0).copied().collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(previous) if u32::from(first) <= u32::from(previous.1) + 1 => {
                    previous.1 = previous.1.max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        Self(merged)
    }

    /// Ports in both sets.
    pub fn intersection(&self, other: &Self) -> Self {
        let mut ranges = Vec::new();
        for (first, last) in &self.0 {
            for (other_first, other_last) in &other.0 {
                let low = (*first).max(*other_first);
                let high = (*last).min(*other_last);
                if low <= high {
                    ranges.push((low, high));
                }
            }
        }
        Self(ranges).union(&Self::empty())
    }

    /// Ports in this set and not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let mut ranges = Vec::new();
        for (first, last) in &self.0 {
            let mut start = u32::from(*first);
            let end = u32::from(*last);
            for (other_first, other_last) in &other.0 {
                let (cut_first, cut_last) = (u32::from(*other_first), u32::from(*other_last));
                if cut_last < start || cut_first > end {
                    continue;
                }
                if cut_first > start {
                    ranges.push((start, cut_first - 1));
                }
                start = start.max(cut_last + 1);
            }
            if start <= end {
                ranges.push((start, end));
            }
        }
        Self(
            ranges
                .into_iter()
                .filter_map(|(first, last)| {
                    Some((u16::try_from(first).ok()?, u16::try_from(last).ok()?))
                })
                .collect(),
        )
    }
}

/// `any`, or ranges as `80, 8000-8080`.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::all() {
            return f.write_str("any");
        }
        for (index, (first, last)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

/// Allowed ports per protocol of [`PROTOCOLS`], in that order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach(pub [PortSet; 3]);

impl Reach {
    /// Every port of every protocol.
    pub fn all() -> Self {
        Self([PortSet::all(), PortSet::all(), PortSet::all()])
    }

    /// Ports of `protocol`, empty for protocols without ports.
    pub fn ports(&self, protocol: Protocol) -> PortSet {
        PROTOCOLS
            .iter()
            .position(|known| *known == protocol)
            .map_or_else(PortSet::empty, |index| self.0[index].clone())
    }

    /// Applies `combine` protocol by protocol.
    pub fn zip(&self, other: &Self, combine: impl Fn(&PortSet, &PortSet) -> PortSet) -> Self {
        let [tcp, udp, sctp] = &self.0;
        let [other_tcp, other_udp, other_sctp] = &other.0;
        Self([
            combine(tcp, other_tcp),
            combine(udp, other_udp),
            combine(sctp, other_sctp),
        ])
    }

    /// Whether no port of any protocol is reached.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(PortSet::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u16, u16)]) -> PortSet {
        ranges.iter().fold(PortSet::empty(), |set, (first, last)| {
            set.union(&PortSet::range(*first, *last))
        })
    }

    #[test]
    fn unions_merge_overlapping_and_adjacent_ranges() {
        let merged = set(&[(8080, 8080), (80, 80), (81, 90), (8000, 8081), (443, 443)]);
        assert_eq!(merged.ranges(), [(80, 90), (443, 443), (8000, 8081)]);
        assert_eq!(merged.to_string(), "80-90, 443, 8000-8081");
        assert_eq!(merged.len(), 11 + 1 + 82);
        assert_eq!(PortSet::all().to_string(), "any");
        assert_eq!(PortSet::range(0, 0), PortSet::empty());
        assert_eq!(PortSet::range(0, 3).ranges(), [(1, 3)]);
    }

    #[test]
    fn differences_and_intersections_are_exact_at_the_edges() {
        let all = PortSet::all();
        let some = set(&[(1, 1), (80, 80), (8000, 8080), (65535, 65535)]);
        let rest = all.difference(&some);
        assert_eq!(rest.ranges(), [(2, 79), (81, 7999), (8081, 65534)]);
        assert_eq!(rest.len() + some.len(), 65535);
        assert_eq!(rest.intersection(&some), PortSet::empty());
        assert_eq!(rest.union(&some), all);
        assert_eq!(
            some.intersection(&set(&[(70, 8000), (8080, 9000)]))
                .ranges(),
            [(80, 80), (8000, 8000), (8080, 8080)]
        );
        assert_eq!(some.difference(&PortSet::empty()), some);
        assert_eq!(PortSet::empty().difference(&some), PortSet::empty());
        for port in [1, 2, 79, 80, 81, 7999, 8000, 8080, 8081, 65534, 65535] {
            assert_eq!(rest.contains(port), !some.contains(port), "{port}");
        }
    }
}
