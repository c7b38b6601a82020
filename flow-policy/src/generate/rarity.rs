//! Rarely seen edges: those a reviewer should look at twice, and those
//! `--min-connections` and `--since` leave out of the proposal.
//!
//! Ages count from the newest `last_seen` in the graph, not from the wall
//! clock: a stored graph gives the same proposal whenever it is read.

use std::{fmt, sync::Arc, time::Duration};

use flow_model::record::{Protocol, Timestamp};

use crate::graph::{EdgeStats, Graph, days::day_of};

/// An edge kept with at most this many connections is marked rare; so is
/// one seen on a single day of a graph that spans several.
pub const RARE_MAX_CONNECTIONS: u64 = 3;

/// An edge kept but last seen this long before the newest is marked rare.
pub const RARE_AGE: Duration = Duration::from_secs(7 * 86_400);

/// What leaves an edge out (`--min-connections`, `--since`). The default
/// leaves nothing out: the proposal is the same as without them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeThresholds {
    /// Edges with fewer connections are left out.
    pub min_connections: Option<u64>,
    /// Edges last seen longer than this before the newest are left out.
    pub since: Option<Duration>,
}

impl EdgeThresholds {
    /// Whether a flag was given.
    pub fn is_set(&self) -> bool {
        self.min_connections.is_some() || self.since.is_some()
    }
}

impl fmt::Display for EdgeThresholds {
    /// The flags as given: `--min-connections 2 --since 7days`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            min_connections,
            since,
        } = self;
        let mut separator = "";
        if let Some(minimum) = min_connections {
            write!(f, "--min-connections {minimum}")?;
            separator = " ";
        }
        if let Some(since) = since {
            write!(
                f,
                "{separator}--since {}",
                humantime::format_duration(*since)
            )?;
        }
        Ok(())
    }
}

/// How often and how lately an edge was seen, as REVIEW.md says it. The
/// ends' names are shared by every sighting of the same end: a graph whose
/// edges were each seen once has as many sightings as edges.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sighting {
    /// The client, as [`crate::graph::Party`] displays it.
    pub client: Arc<str>,
    /// The server.
    pub server: Arc<str>,
    /// Protocol.
    pub protocol: Protocol,
    /// Server port.
    pub port: u16,
    /// Connections, at least one.
    pub connections: u64,
    /// Distinct days seen (within the last 64 before its last).
    pub days: u32,
    /// How long before the graph's newest edge it was last seen.
    pub age: Duration,
}

impl fmt::Display for Sighting {
    /// "`a -> b TCP/8080`: 1 connection, 12 days ago", "`...`: 5
    /// connections on 1 day".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            client,
            server,
            protocol,
            port,
            connections,
            days,
            age,
        } = self;
        write!(f, "`{client} -> {server} {protocol}/{port}`: ")?;
        if *connections == 1 {
            f.write_str("1 connection")?;
        } else {
            write!(
                f,
                "{connections} connections on {}",
                plural(u64::from(*days), "day")
            )?;
        }
        if let Some(age) = age_text(*age) {
            write!(f, ", {age} ago")?;
        }
        Ok(())
    }
}

/// An edge left out, and by which flags.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeftOut {
    /// The edge.
    pub sighting: Sighting,
    /// It had fewer than `--min-connections`.
    pub too_few: bool,
    /// It was last seen longer than `--since` before the newest.
    pub too_old: bool,
}

impl LeftOut {
    /// The line REVIEW.md lists it with, naming the flags that left it out.
    pub fn line(&self, thresholds: &EdgeThresholds) -> String {
        let mut by = Vec::new();
        if let (true, Some(minimum)) = (self.too_few, thresholds.min_connections) {
            by.push(format!("--min-connections {minimum}"));
        }
        if let (true, Some(since)) = (self.too_old, thresholds.since) {
            by.push(format!("--since {}", humantime::format_duration(since)));
        }
        format!("{} (left out by {})", self.sighting, by.join(" and "))
    }
}

/// What becomes of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Seen often and lately enough.
    Common,
    /// Kept, and marked rare.
    Rare,
    /// Left out: (too few connections, too old).
    LeftOut(bool, bool),
}

/// Judges edges against the graph's newest time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Judge {
    newest: Timestamp,
    /// The graph was seen on more than one day: an edge seen on one only
    /// stands out.
    several_days: bool,
    thresholds: EdgeThresholds,
}

impl Judge {
    pub(super) fn new(graph: &Graph, thresholds: EdgeThresholds) -> Self {
        let epoch = Timestamp(std::time::SystemTime::UNIX_EPOCH);
        let (oldest, newest) = graph
            .edges()
            .map(|(_, stats)| (stats.first_seen, stats.last_seen))
            .reduce(|(oldest, newest), (first, last)| (oldest.min(first), newest.max(last)))
            .unwrap_or((epoch, epoch));
        Self {
            newest,
            several_days: day_of(oldest.0) != day_of(newest.0),
            thresholds,
        }
    }

    /// How long before the newest edge `stats` was last seen.
    pub(super) fn age(&self, stats: &EdgeStats) -> Duration {
        self.newest
            .0
            .duration_since(stats.last_seen.0)
            .unwrap_or_default()
    }

    pub(super) fn verdict(&self, stats: &EdgeStats) -> Verdict {
        let connections = stats.connection_count();
        let age = self.age(stats);
        let EdgeThresholds {
            min_connections,
            since,
        } = self.thresholds;
        let too_few = min_connections.is_some_and(|minimum| connections < minimum);
        let too_old = since.is_some_and(|since| age > since);
        if too_few || too_old {
            Verdict::LeftOut(too_few, too_old)
        } else if connections <= RARE_MAX_CONNECTIONS
            || (self.several_days && stats.days.count() <= 1)
            || age >= RARE_AGE
        {
            Verdict::Rare
        } else {
            Verdict::Common
        }
    }

    pub(super) fn sighting(
        &self,
        (client, server): (Arc<str>, Arc<str>),
        (protocol, port): (Protocol, u16),
        stats: &EdgeStats,
    ) -> Sighting {
        Sighting {
            client,
            server,
            protocol,
            port,
            connections: stats.connection_count(),
            days: stats.days.count().max(1),
            age: self.age(stats),
        }
    }
}

fn plural(count: u64, unit: &str) -> String {
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

/// An age in its largest whole unit (days, hours, minutes); nothing under a
/// minute.
fn age_text(age: Duration) -> Option<String> {
    let seconds = age.as_secs();
    [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(unit, _)| seconds >= *unit)
        .map(|(unit, name)| plural(seconds / unit, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(connections: u64, days: u32, age: u64) -> String {
        Sighting {
            client: "a".into(),
            server: "b".into(),
            protocol: Protocol(6),
            port: 8080,
            connections,
            days,
            age: Duration::from_secs(age),
        }
        .to_string()
    }

    #[test]
    fn sightings_say_connections_days_and_age() {
        assert_eq!(
            sighting(1, 1, 12 * 86_400 + 5),
            "`a -> b TCP/8080`: 1 connection, 12 days ago"
        );
        assert_eq!(
            sighting(5, 1, 0),
            "`a -> b TCP/8080`: 5 connections on 1 day"
        );
        assert_eq!(
            sighting(40, 3, 86_400),
            "`a -> b TCP/8080`: 40 connections on 3 days, 1 day ago"
        );
        assert_eq!(
            sighting(2, 1, 7_200 + 59),
            "`a -> b TCP/8080`: 2 connections on 1 day, 2 hours ago"
        );
        assert_eq!(sighting(1, 1, 59), "`a -> b TCP/8080`: 1 connection");
        assert_eq!(
            sighting(1, 1, 61),
            "`a -> b TCP/8080`: 1 connection, 1 minute ago"
        );
    }

    #[test]
    fn left_out_lines_name_the_flags_that_left_them_out() {
        let thresholds = EdgeThresholds {
            min_connections: Some(2),
            since: Some(Duration::from_secs(7 * 86_400)),
        };
        assert_eq!(thresholds.to_string(), "--min-connections 2 --since 7days");
        assert_eq!(EdgeThresholds::default().to_string(), "");
        let left_out = |too_few, too_old| LeftOut {
            sighting: Sighting {
                client: "a".into(),
                server: "b".into(),
                protocol: Protocol(6),
                port: 80,
                connections: 1,
                days: 1,
                age: Duration::from_secs(9 * 86_400),
            },
            too_few,
            too_old,
        };
        assert_eq!(
            left_out(true, true).line(&thresholds),
            "`a -> b TCP/80`: 1 connection, 9 days ago (left out by --min-connections 2 and --since 7days)"
        );
        assert_eq!(
            left_out(false, true).line(&thresholds),
            "`a -> b TCP/80`: 1 connection, 9 days ago (left out by --since 7days)"
        );
    }
}
