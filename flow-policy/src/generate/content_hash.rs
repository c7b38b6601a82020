//! The content hash on every policy document flow-agent writes, by which a
//! later export tells its own untouched files from files a person edited or
//! wrote.
//!
//! The annotation comes first under `metadata:`, where both the serializer
//! (which writes `ObjectMeta`'s fields in alphabetical order) and the direct
//! writer put it:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     flow-agent.io/content-hash: sha256:<64 lowercase hex digits>
//!   labels:
//!     app.kubernetes.io/managed-by: flow-agent
//! ```
//!
//! What is hashed: SHA-256 over the document's bytes as written, less those
//! two lines (`  annotations:` and the hash's own line), that is the bytes
//! up to and including `metadata:\n` followed by the bytes from `  labels:`
//! to the end. Those are exactly the bytes flow-agent wrote before the
//! annotation existed. Any change outside the hash's digits, a comment or a
//! reformatting as well, makes the file's hash differ: hashing the text
//! rather than the parsed object keeps the check to one SHA-256 over the
//! file, without parsing it.

use sha2::{Digest, Sha256};

/// The annotation holding a document's content hash.
pub const CONTENT_HASH_ANNOTATION: &str = "flow-agent.io/content-hash";

/// What precedes the hash's digits, starting at the line after `metadata:`.
const LINES_HEAD: &str = "  annotations:\n    flow-agent.io/content-hash: sha256:";

/// The digits of a SHA-256 in hexadecimal.
const DIGITS: usize = 64;

/// Both lines, the final line break included.
const LINES_LEN: usize = LINES_HEAD.len() + DIGITS + 1;

/// The line the annotation's lines follow.
const METADATA: &str = "\nmetadata:\n";

/// `bytes` in lowercase hexadecimal, appended to `text`.
fn push_hex(text: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
}

/// The SHA-256 of `before` followed by `after`, in hexadecimal.
fn digest(before: &str, after: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(before.as_bytes());
    hasher.update(after.as_bytes());
    let mut hex = String::with_capacity(DIGITS);
    push_hex(&mut hex, &hasher.finalize());
    hex
}

/// The annotation's value for a document written without it:
/// `sha256:<hex>`.
pub(super) fn annotation_value(unannotated: &str) -> String {
    format!("sha256:{}", digest(unannotated, ""))
}

/// Appends the annotation's lines to `text`, which has just written
/// `metadata:`, with zeros for the digits until [`seal`] writes them;
/// returns where the lines start.
pub(super) fn open(text: &mut String) -> usize {
    let start = text.len();
    text.push_str(LINES_HEAD);
    text.extend(std::iter::repeat_n('0', DIGITS));
    text.push('\n');
    start
}

/// Writes the hash of `text` less the lines [`open`] began at `start` into
/// their digits.
pub(super) fn seal(text: &mut String, start: usize) {
    let end = start + LINES_LEN;
    let (Some(before), Some(after)) = (text.get(..start), text.get(end..)) else {
        return;
    };
    let hex = digest(before, after);
    let digits = end - 1 - DIGITS;
    text.replace_range(digits..end - 1, &hex);
}

/// A document's text around the annotation's lines: (before, digits,
/// after), if it has them where flow-agent writes them.
fn split(text: &str) -> Option<(&str, &str, &str)> {
    let start = text.find(METADATA)? + METADATA.len();
    let lines = text.get(start..start + LINES_LEN)?;
    let digits = lines.strip_prefix(LINES_HEAD)?.strip_suffix('\n')?;
    let well_formed = digits
        .bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| (&text[..start], digits, &text[start + LINES_LEN..]))
}

/// What a document says of its own content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// It has the annotation, and its content is what the hash says.
    Intact,
    /// It has the annotation, and its content changed since.
    Broken,
    /// No annotation where flow-agent writes it.
    Missing,
}

/// Checks a document's content against its content hash.
pub fn check(text: &str) -> Seal {
    match split(text) {
        Some((before, digits, after)) if digest(before, after) == digits => Seal::Intact,
        Some(_) => Seal::Broken,
        None => Seal::Missing,
    }
}

/// Whether `other` is `annotated` without the annotation's lines: what
/// flow-agent wrote before documents had the annotation, or a copy a person
/// took it out of.
pub fn is_without_annotation(annotated: &str, other: &str) -> bool {
    split(annotated).is_some_and(|(before, _, after)| {
        other.len() == before.len() + after.len()
            && other.starts_with(before)
            && other.ends_with(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNANNOTATED: &str =
        "apiVersion: v1\nkind: X\nmetadata:\n  labels:\n    a: b\n  name: n\nspec: {}\n";

    fn annotated() -> String {
        let mut text = String::from("apiVersion: v1\nkind: X\nmetadata:\n");
        let start = open(&mut text);
        text.push_str("  labels:\n    a: b\n  name: n\nspec: {}\n");
        seal(&mut text, start);
        text
    }

    #[test]
    fn the_hash_covers_the_document_less_its_own_lines() {
        let text = annotated();
        // `printf 'apiVersion: v1\nkind: X\nmetadata:\n  labels:\n    a: b\n  name: n\nspec: {}\n' | sha256sum`
        let hash = "sha256:f7d2cb6050fe7bdbebd2dc082aa86a321d7f3bb4edc57ca8af3b4661a6306fc1";
        assert_eq!(annotation_value(UNANNOTATED), hash);
        assert_eq!(
            text,
            format!(
                "apiVersion: v1\nkind: X\nmetadata:\n  annotations:\n    flow-agent.io/content-hash: {hash}\n  labels:\n    a: b\n  name: n\nspec: {{}}\n"
            )
        );
        assert_eq!(check(&text), Seal::Intact);
        assert!(is_without_annotation(&text, UNANNOTATED));
        assert!(!is_without_annotation(&text, &text));
    }

    #[test]
    fn any_change_breaks_the_seal_and_no_annotation_is_missing() {
        let text = annotated();
        for changed in [
            text.replace("a: b", "a: c"),
            text.replace("spec: {}\n", "spec: {}\n# reviewed\n"),
            text.replace("  name: n\n", "  name:  n\n"),
            format!("{text}---\n{text}"),
        ] {
            assert_eq!(check(&changed), Seal::Broken, "{changed}");
        }
        assert_eq!(check(UNANNOTATED), Seal::Missing);
        assert_eq!(check(""), Seal::Missing);
        // Another annotation before ours moves it from where it is looked for.
        let moved = text.replace("  annotations:\n", "  annotations:\n    a: b\n");
        assert_eq!(check(&moved), Seal::Missing);
        let upper = text.replace("sha256:f7", "sha256:F7");
        assert_eq!(check(&upper), Seal::Missing);
    }
}
