//! Kubernetes label selectors as Hubble's `source_label` and
//! `destination_label` filters take them: `app=cart`, `app in (a,b)`,
//! `!canary`, `tier!=db`, `k8s:app=cart`, `reserved:world`.
//!
//! Hubble's labels carry a source (`k8s:app=cart`, `reserved:world`). A key
//! with a source matches labels of that source only; a key without one, or
//! with `any:`, matches labels of every source.

use std::fmt;

/// A label of an endpoint: its source (`k8s`, `reserved`), key and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label<'a> {
    /// `k8s` for Kubernetes labels, `reserved` for Cilium's reserved ones.
    pub source: &'a str,
    /// The key, e.g. `app` or `io.kubernetes.pod.namespace`.
    pub key: &'a str,
    /// The value; empty for reserved labels.
    pub value: &'a str,
}

/// A selector that cannot be parsed: what was expected, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at character {position} of {selector:?}")]
pub struct SelectorError {
    /// The selector.
    pub selector: String,
    /// Offset of the problem, in characters.
    pub position: usize,
    /// What was wrong.
    pub problem: String,
}

/// A requirement's key: a label key and, optionally, the source it must have.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    source: Option<String>,
    name: String,
}

impl Key {
    fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some(("any", name)) => Self {
                source: None,
                name: name.to_owned(),
            },
            Some((source, name)) => Self {
                source: Some(source.to_owned()),
                name: name.to_owned(),
            },
            None => Self {
                source: None,
                name: text.to_owned(),
            },
        }
    }

    /// The values of the labels this key names.
    fn values<'a>(&'a self, labels: &'a [Label<'a>]) -> impl Iterator<Item = &'a str> + 'a {
        labels
            .iter()
            .filter(|label| {
                label.key == self.name && self.source.as_deref().is_none_or(|s| s == label.source)
            })
            .map(|label| label.value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Operator {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: Key,
    operator: Operator,
}

impl Requirement {
    fn matches(&self, labels: &[Label<'_>]) -> bool {
        let mut values = self.key.values(labels);
        match &self.operator {
            Operator::Exists => values.next().is_some(),
            Operator::NotExists => values.next().is_none(),
            Operator::In(set) => values.any(|value| set.iter().any(|wanted| wanted == value)),
            Operator::NotIn(set) => !values.any(|value| set.iter().any(|wanted| wanted == value)),
            Operator::GreaterThan(bound) => {
                values.any(|value| value.parse::<i64>().is_ok_and(|number| number > *bound))
            }
            Operator::LessThan(bound) => {
                values.any(|value| value.parse::<i64>().is_ok_and(|number| number < *bound))
            }
        }
    }
}

/// A parsed selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a selector in Kubernetes syntax, keys optionally prefixed with
    /// a label source.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            text,
            tokens: tokenize(text)?,
            next: 0,
        };
        let mut requirements = vec![parser.requirement()?];
        while parser.peek().is_some() {
            parser.expect(&Token::Comma, "`,` between requirements")?;
            requirements.push(parser.requirement()?);
        }
        Ok(Self { requirements })
    }

    /// Whether an endpoint with these labels is selected.
    pub fn matches(&self, labels: &[Label<'_>]) -> bool {
        self.requirements
            .iter()
            .all(|requirement| requirement.matches(labels))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Equals,
    NotEquals,
    Greater,
    Less,
    Comma,
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Word(word) => write!(f, "{word:?}"),
            Self::Not => f.write_str("`!`"),
            Self::Equals => f.write_str("`=`"),
            Self::NotEquals => f.write_str("`!=`"),
            Self::Greater => f.write_str("`>`"),
            Self::Less => f.write_str("`<`"),
            Self::Comma => f.write_str("`,`"),
            Self::Open => f.write_str("`(`"),
            Self::Close => f.write_str("`)`"),
        }
    }
}

const SPECIAL: &[char] = &['!', '=', ',', '(', ')', '<', '>'];

/// Tokens with their character offsets.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while let Some(&c) = chars.get(at) {
        let start = at;
        let next = chars.get(at + 1).copied();
        let token = match c {
            c if c.is_whitespace() => {
                at += 1;
                continue;
            }
            '!' if next == Some('=') => Token::NotEquals,
            '!' => Token::Not,
            '=' if next == Some('=') => Token::Equals,
            '=' => Token::Equals,
            '>' => Token::Greater,
            '<' => Token::Less,
            ',' => Token::Comma,
            '(' => Token::Open,
            ')' => Token::Close,
            _ => {
                let end = chars[at..]
                    .iter()
                    .position(|c| c.is_whitespace() || SPECIAL.contains(c))
                    .map_or(chars.len(), |length| at + length);
                tokens.push((start, Token::Word(chars[at..end].iter().collect())));
                at = end;
                continue;
            }
        };
        at += match token {
            Token::NotEquals => 2,
            Token::Equals if next == Some('=') => 2,
            _ => 1,
        };
        tokens.push((start, token));
    }
    if tokens.is_empty() {
        return Err(SelectorError {
            selector: text.to_owned(),
            position: 0,
            problem: "empty selector".to_owned(),
        });
    }
    Ok(tokens)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(usize, Token)>,
    next: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, token)| token)
    }

    fn error(&self, problem: String) -> SelectorError {
        SelectorError {
            selector: self.text.to_owned(),
            position: self
                .tokens
                .get(self.next)
                .map_or(self.text.chars().count(), |(at, _)| *at),
            problem,
        }
    }

    fn take(&mut self, expected: &str) -> Result<Token, SelectorError> {
        let token = self
            .peek()
            .cloned()
            .ok_or_else(|| self.error(format!("expected {expected}, found the end")))?;
        self.next += 1;
        Ok(token)
    }

    fn expect(&mut self, wanted: &Token, expected: &str) -> Result<(), SelectorError> {
        match self.peek() {
            Some(token) if token == wanted => {
                self.next += 1;
                Ok(())
            }
            Some(token) => Err(self.error(format!("expected {expected}, found {token}"))),
            None => Err(self.error(format!("expected {expected}, found the end"))),
        }
    }

    fn key(&mut self) -> Result<Key, SelectorError> {
        match self.peek().cloned() {
            Some(Token::Word(word)) => {
                let key = Key::parse(&word);
                if !valid_key(&key.name) {
                    return Err(self.error(format!(
                        "{word:?} is not a label key ([prefix/]name of letters, digits, `-`, `_`, `.`)"
                    )));
                }
                self.next += 1;
                Ok(key)
            }
            Some(token) => Err(self.error(format!("expected a label key, found {token}"))),
            None => Err(self.error("expected a label key, found the end".to_owned())),
        }
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek().cloned() {
            // `key=` selects an empty value.
            None | Some(Token::Comma | Token::Close) => Ok(String::new()),
            Some(Token::Word(word)) if valid_value(&word) => {
                self.next += 1;
                Ok(word)
            }
            Some(Token::Word(word)) => Err(self.error(format!(
                "{word:?} is not a label value (letters, digits, `-`, `_`, `.`; at most 63)"
            ))),
            Some(token) => Err(self.error(format!("expected a value, found {token}"))),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect(&Token::Open, "`(` and a list of values")?;
        let mut values = vec![self.value()?];
        loop {
            match self.take("`,` or `)`")? {
                Token::Comma => values.push(self.value()?),
                Token::Close => return Ok(values),
                token => {
                    self.next -= 1;
                    return Err(self.error(format!("expected `,` or `)`, found {token}")));
                }
            }
        }
    }

    fn integer(&mut self) -> Result<i64, SelectorError> {
        match self.take("an integer")? {
            Token::Word(word) => word.parse().map_err(|_| {
                self.next -= 1;
                self.error(format!("{word:?} is not an integer"))
            }),
            token => {
                self.next -= 1;
                Err(self.error(format!("expected an integer, found {token}")))
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Not) {
            self.next += 1;
            let key = self.key()?;
            return Ok(Requirement {
                key,
                operator: Operator::NotExists,
            });
        }
        let key = self.key()?;
        let operator = match self.peek().cloned() {
            None | Some(Token::Comma) => Operator::Exists,
            Some(Token::Equals) => {
                self.next += 1;
                Operator::In(vec![self.value()?])
            }
            Some(Token::NotEquals) => {
                self.next += 1;
                Operator::NotIn(vec![self.value()?])
            }
            Some(Token::Greater) => {
                self.next += 1;
                Operator::GreaterThan(self.integer()?)
            }
            Some(Token::Less) => {
                self.next += 1;
                Operator::LessThan(self.integer()?)
            }
            Some(Token::Word(word)) if word == "in" => {
                self.next += 1;
                Operator::In(self.set()?)
            }
            Some(Token::Word(word)) if word == "notin" => {
                self.next += 1;
                Operator::NotIn(self.set()?)
            }
            Some(token) => {
                return Err(self.error(format!(
                    "expected `=`, `==`, `!=`, `in`, `notin`, `>`, `<` or `,`, found {token}"
                )));
            }
        };
        Ok(Requirement { key, operator })
    }
}

fn name_chars(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[prefix/]name`, as Kubernetes label keys are (lengths not enforced: a
/// key too long for Kubernetes simply selects nothing).
fn valid_key(key: &str) -> bool {
    let name = key.rsplit_once('/').map_or(key, |(prefix, name)| {
        if prefix.is_empty() || !name_chars(prefix) {
            ""
        } else {
            name
        }
    });
    !name.is_empty() && name_chars(name)
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63 && name_chars(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<Label<'static>> {
        vec![
            Label {
                source: "k8s",
                key: "app",
                value: "cart",
            },
            Label {
                source: "k8s",
                key: "tier",
                value: "backend",
            },
            Label {
                source: "k8s",
                key: "replicas",
                value: "3",
            },
            Label {
                source: "k8s",
                key: "io.kubernetes.pod.namespace",
                value: "shop-a",
            },
        ]
    }

    fn selects(selector: &str) -> bool {
        Selector::parse(selector)
            .unwrap_or_else(|error| panic!("{selector}: {error}"))
            .matches(&labels())
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        for (selector, expected) in [
            ("app=cart", true),
            ("app==cart", true),
            ("app = cart", true),
            ("app=web", false),
            ("app!=web", true),
            ("app!=cart", false),
            ("canary!=yes", true),
            ("app", true),
            ("canary", false),
            ("!canary", true),
            ("!app", false),
            ("app in (web, cart)", true),
            ("app in (web,db)", false),
            ("app notin (web,db)", true),
            ("canary notin (yes)", true),
            ("app=cart,tier=backend", true),
            ("app=cart, tier=frontend", false),
            ("replicas>2", true),
            ("replicas<3", false),
            ("app>2", false),
            ("io.kubernetes.pod.namespace=shop-a", true),
            ("app=", false),
        ] {
            assert_eq!(selects(selector), expected, "{selector}");
        }
    }

    #[test]
    fn a_source_prefix_selects_labels_of_that_source_only() {
        let mut with_reserved = labels();
        with_reserved.push(Label {
            source: "reserved",
            key: "world",
            value: "",
        });
        let matches = |selector: &str| Selector::parse(selector).unwrap().matches(&with_reserved);
        assert!(matches("k8s:app=cart"));
        assert!(matches("any:app=cart"));
        assert!(!matches("reserved:app=cart"));
        assert!(matches("reserved:world"));
        assert!(matches("world"));
        assert!(!matches("k8s:world"));
        assert!(matches("k8s:app in (cart), !k8s:canary"));
    }

    #[test]
    fn malformed_selectors_say_what_was_expected_and_where() {
        for (selector, problem, position) in [
            ("", "empty selector", 0),
            ("app in cart", "expected `(`", 7),
            ("app in (a,b", "expected `,` or `)`, found the end", 11),
            ("app=cart tier=db", "expected `,` between requirements", 9),
            ("=cart", "expected a label key, found `=`", 0),
            ("app=ca$t", "is not a label value", 4),
            ("ap p", "expected `=`", 3),
            ("replicas>three", "is not an integer", 9),
            ("app!", "expected `=`", 3),
            ("/app=x", "is not a label key", 0),
            ("app=cart,", "expected a label key, found the end", 9),
        ] {
            let error = Selector::parse(selector).unwrap_err();
            assert!(
                error.problem.contains(problem) && error.position == position,
                "{selector:?}: {error} (position {})",
                error.position
            );
        }
    }
}
