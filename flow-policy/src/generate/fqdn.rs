//! Which DNS names a workload's `toFQDNs` rules name one by one and which
//! share a pattern.
//!
//! Names sharing their parent (the name less its first label) become one
//! `matchPattern: "*.<parent>"` when more than the threshold
//! (`--fqdn-pattern-threshold`, [`DEFAULT_PATTERN_THRESHOLD`]) of them do,
//! and only when the parent is a registered domain or a name under one: a
//! pattern never widens to a public suffix. Public suffixes are those of
//! the Public Suffix List compiled into the `psl` crate, both its ICANN
//! section (`com`, `co.uk`) and its private one (`blob.core.windows.net`,
//! `vault.azure.net`): the private entries are where a provider hands out
//! names to different customers, so `*.vault.azure.net` would admit every
//! customer's vault. Cilium's `*` stays within one label, which is why the
//! parent, not the registered domain, is what names share.

use std::collections::{BTreeMap, BTreeSet};

use crate::cilium::FqdnSelector;

/// The default of `--fqdn-pattern-threshold`: more than this many names
/// under one parent become a pattern. Five keeps the usual handful of an
/// API's hosts (`api`, `auth`, `uploads`, ...) as names, and folds the
/// numbered or per-tenant hosts of a CDN or a sharded service.
pub const DEFAULT_PATTERN_THRESHOLD: usize = 5;

/// Whether `domain` is a registered domain or a name under one, by the
/// Public Suffix List (ICANN and private sections); false for a public
/// suffix itself and for a name the list cannot place.
pub fn under_registered_domain(domain: &str) -> bool {
    // A domain is the list's suffix plus one label: a public suffix has
    // none.
    psl::domain(domain.as_bytes()).is_some()
}

/// Each name's selector: its own `matchName`, or the `matchPattern` of its
/// parent when more than `threshold` of `names` share that parent and the
/// parent is under a registered domain ([`under_registered_domain`]).
pub fn selectors<'a>(
    names: &BTreeSet<&'a str>,
    threshold: usize,
) -> BTreeMap<&'a str, FqdnSelector> {
    let mut by_parent: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        if let Some((_, parent)) = name.split_once('.') {
            *by_parent.entry(parent).or_default() += 1;
        }
    }
    names
        .iter()
        .map(|name| {
            let pattern = name.split_once('.').and_then(|(_, parent)| {
                (by_parent.get(parent).copied().unwrap_or(0) > threshold
                    && under_registered_domain(parent))
                .then(|| FqdnSelector::MatchPattern(format!("*.{parent}")))
            });
            (
                *name,
                pattern.unwrap_or_else(|| FqdnSelector::MatchName((*name).to_owned())),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(count: usize, parent: &str) -> Vec<String> {
        (0..count)
            .map(|index| format!("h{index}.{parent}"))
            .collect()
    }

    fn chosen(names: &[String], threshold: usize) -> BTreeSet<FqdnSelector> {
        let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        selectors(&names, threshold).into_values().collect()
    }

    #[test]
    fn names_become_a_pattern_only_above_the_threshold() {
        let at = hosts(5, "cdn.example.com");
        assert_eq!(
            chosen(&at, 5),
            at.iter()
                .map(|name| FqdnSelector::MatchName(name.clone()))
                .collect()
        );
        let above = hosts(6, "cdn.example.com");
        assert_eq!(
            chosen(&above, 5),
            BTreeSet::from([FqdnSelector::MatchPattern("*.cdn.example.com".into())])
        );
        let below = hosts(4, "cdn.example.com");
        assert_eq!(chosen(&below, 5).len(), 4);
        // A registered domain's own hosts fold too.
        assert_eq!(
            chosen(&hosts(6, "example.com"), 5),
            BTreeSet::from([FqdnSelector::MatchPattern("*.example.com".into())])
        );
    }

    #[test]
    fn a_public_suffix_never_becomes_a_pattern() {
        for parent in ["com", "co.uk", "blob.core.windows.net"] {
            let names = hosts(10, parent);
            assert_eq!(
                chosen(&names, 5),
                names
                    .iter()
                    .map(|name| FqdnSelector::MatchName(name.clone()))
                    .collect(),
                "{parent}"
            );
        }
        assert!(under_registered_domain("example.com"));
        assert!(under_registered_domain("x.example.com"));
        assert!(under_registered_domain("acct.blob.core.windows.net"));
        assert!(!under_registered_domain("blob.core.windows.net"));
        assert!(!under_registered_domain("com"));
    }
}
