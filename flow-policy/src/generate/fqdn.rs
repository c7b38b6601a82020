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
//! `servicebus.windows.net`): the private entries are where a provider
//! hands out names to different customers, so `*.blob.core.windows.net`
//! would admit every customer's storage account. The list does not have
//! every such suffix: Azure's Key Vault, SQL, Cosmos DB and Container
//! Registry hand out names under `vault.azure.net`, `database.windows.net`,
//! `documents.azure.com` and `azurecr.io`, none of them in it (checked
//! against the list of `psl` 2.1.247). [`SHARED_SUFFIXES`] adds those, so
//! `*.vault.azure.net` is never written either. Cilium's `*` stays within
//! one label, which is why the parent, not the registered domain, is what
//! names share.

use std::collections::{BTreeMap, BTreeSet};

use crate::cilium::FqdnSelector;

/// The default of `--fqdn-pattern-threshold`: more than this many names
/// under one parent become a pattern. Five keeps the usual handful of an
/// API's hosts (`api`, `auth`, `uploads`, ...) as names, and folds the
/// numbered or per-tenant hosts of a CDN or a sharded service.
pub const DEFAULT_PATTERN_THRESHOLD: usize = 5;

/// Suffixes under which a cloud provider hands out names to different
/// customers and that the Public Suffix List lacks: each is treated as a
/// public suffix. Lower case, without the final dot.
pub const SHARED_SUFFIXES: [&str; 16] = [
    "azconfig.io",
    "azure-devices.net",
    "azurecr.io",
    "cognitiveservices.azure.com",
    "database.windows.net",
    "dfs.core.windows.net",
    "documents.azure.com",
    "managedhsm.azure.net",
    "mysql.database.azure.com",
    "openai.azure.com",
    "postgres.database.azure.com",
    "queue.core.windows.net",
    "redis.cache.windows.net",
    "search.windows.net",
    "table.core.windows.net",
    "vault.azure.net",
];

/// Whether `domain` is a registered domain or a name under one, by the
/// Public Suffix List (ICANN and private sections) and [`SHARED_SUFFIXES`];
/// false for a public suffix itself and for a name the list cannot place.
pub fn under_registered_domain(domain: &str) -> bool {
    // A domain is the list's suffix plus one label: a public suffix has
    // none.
    psl::domain(domain.as_bytes()).is_some() && !is_shared_suffix(domain)
}

/// Whether `domain` is one of [`SHARED_SUFFIXES`] (any case, final dot or
/// not).
fn is_shared_suffix(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    SHARED_SUFFIXES
        .iter()
        .any(|suffix| domain.eq_ignore_ascii_case(suffix))
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
        for parent in [
            "com",
            "co.uk",
            "blob.core.windows.net",
            "vault.azure.net",
            "database.windows.net",
            "azurecr.io",
        ] {
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
        assert!(!under_registered_domain("Vault.Azure.NET."));
        assert!(under_registered_domain("team.vault.azure.net"));
        assert!(under_registered_domain("azure.net"));
    }

    #[test]
    fn the_shared_suffixes_are_not_in_the_public_suffix_list() {
        // Each entry is there because the list lacks it: one the list
        // gains is dropped from ours.
        for suffix in SHARED_SUFFIXES {
            assert!(psl::domain(suffix.as_bytes()).is_some(), "{suffix}");
        }
    }
}
