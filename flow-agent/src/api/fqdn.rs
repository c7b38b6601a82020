//! FQDN patterns as Hubble's `source_fqdn` / `destination_fqdn` filters and
//! `observe --to-fqdn` take them: a name, case-insensitive, without its final
//! dot, in which `*` stands for any run (possibly empty) of the characters
//! names are made of (letters, digits, `-`, `_` and `.`). So `*.example.com`
//! matches `api.example.com` and `a.b.example.com`, not `example.com`.

/// A compiled pattern: the literal parts between its stars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnPattern {
    /// Lower case; `parts.len() - 1` stars sat between them.
    parts: Vec<String>,
}

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

impl FqdnPattern {
    /// Reads a pattern.
    ///
    /// # Errors
    /// A message for an empty pattern or one with other characters than
    /// letters, digits, `-`, `_`, `.` and `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let pattern = lower.strip_suffix('.').unwrap_or(&lower);
        if pattern.is_empty() || !pattern.bytes().all(|c| name_char(c) || c == b'*') {
            return Err(format!(
                "{text:?} is not a name pattern: letters, digits, '-', '_', '.' and '*' only"
            ));
        }
        Ok(Self {
            parts: pattern.split('*').map(str::to_owned).collect(),
        })
    }

    /// Whether `name` (lower case, as flows carry it) matches the whole
    /// pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.as_bytes();
        let Some((first, rest)) = self.parts.split_first() else {
            return false;
        };
        let Some(mut remaining) = name.strip_prefix(first.as_bytes()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        // Each star takes the shortest run that lets the next part follow:
        // leftmost matching is enough when every star takes the same
        // characters.
        for part in middle {
            match find(remaining, part.as_bytes()) {
                Some(at) if remaining[..at].iter().all(|c| name_char(*c)) => {
                    remaining = &remaining[at + part.len()..];
                }
                _ => return false,
            }
        }
        remaining.len() >= last.len()
            && remaining.ends_with(last.as_bytes())
            && remaining[..remaining.len() - last.len()]
                .iter()
                .all(|c| name_char(*c))
    }

    /// Whether any of `names` matches.
    pub fn matches_any(&self, names: &[impl AsRef<str>]) -> bool {
        names.iter().any(|name| self.matches(name.as_ref()))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> FqdnPattern {
        FqdnPattern::parse(text).unwrap()
    }

    #[test]
    fn names_match_whole_and_without_case_or_final_dot() {
        let exact = pattern("MyVault.Vault.Azure.NET.");
        assert!(exact.matches("myvault.vault.azure.net"));
        assert!(!exact.matches("myvault.vault.azure.net.evil"));
        assert!(!exact.matches("xmyvault.vault.azure.net"));
    }

    #[test]
    fn stars_take_any_run_of_name_characters() {
        let wildcard = pattern("*.example.com");
        assert!(wildcard.matches("api.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("api.example.com.au"));
        let middle = pattern("db-*.*.internal");
        assert!(middle.matches("db-1.eu.internal"));
        assert!(middle.matches("db-.x.internal"));
        assert!(!middle.matches("web-1.eu.internal"));
        assert!(pattern("*").matches("anything.at.all"));
        assert!(pattern("**").matches(""));
        // A star never takes characters a name cannot have.
        assert!(!pattern("a*b").matches("a/b"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for text in ["", ".", "  ", "a/b", "exa mple.com", "ünïcode.example"] {
            assert!(FqdnPattern::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn any_of_several_names_is_enough() {
        let cdn = pattern("*.cdn.example");
        assert!(cdn.matches_any(&["www.shop.example", "edge.cdn.example"]));
        assert!(!cdn.matches_any(&["www.shop.example"]));
        assert!(!cdn.matches_any(&Vec::<String>::new()));
    }
}
