//! Unified diffs (`diff -u`, three lines of context) between a policy file
//! and its tightening, with `a/PATH` and `b/PATH` headers as `git apply`
//! and `patch -p1` read them.

use std::fmt::Write as _;

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// Most cells of the line table a diff of the changed middle may take;
/// past that the middle is shown replaced whole (still a correct diff).
const MAX_CELLS: usize = 4_000_000;

/// A line of the diff: kept, removed or added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line<'t> {
    Same(&'t str),
    Removed(&'t str),
    Added(&'t str),
}

/// The unified diff from `old` to `new` of the file at `path`; empty when
/// they are equal.
pub fn unified(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let script = script(&old_lines, &new_lines);
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    for hunk in hunks(&script) {
        write_hunk(&mut out, &script, hunk);
    }
    out
}

/// The edit script: common prefix and suffix kept, the middle by a
/// longest common subsequence.
fn script<'t>(old: &[&'t str], new: &[&'t str]) -> Vec<Line<'t>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (old_middle, new_middle) = (
        &old[prefix..old.len() - suffix],
        &new[prefix..new.len() - suffix],
    );
    let mut script: Vec<Line<'t>> = old[..prefix].iter().map(|line| Line::Same(line)).collect();
    script.extend(middle(old_middle, new_middle));
    script.extend(
        old[old.len() - suffix..]
            .iter()
            .map(|line| Line::Same(line)),
    );
    script
}

fn middle<'t>(old: &[&'t str], new: &[&'t str]) -> Vec<Line<'t>> {
    let (rows, columns) = (old.len() + 1, new.len() + 1);
    if rows.saturating_mul(columns) > MAX_CELLS {
        let mut lines: Vec<Line<'t>> = old.iter().map(|line| Line::Removed(line)).collect();
        lines.extend(new.iter().map(|line| Line::Added(line)));
        return lines;
    }
    // common[i][j]: the longest common subsequence of old[i..] and new[j..].
    let mut common = vec![0u32; rows * columns];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            common[i * columns + j] = if old[i] == new[j] {
                common[(i + 1) * columns + j + 1] + 1
            } else {
                common[(i + 1) * columns + j].max(common[i * columns + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut lines = Vec::new();
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            lines.push(Line::Same(old[i]));
            i += 1;
            j += 1;
        } else if i < old.len()
            && (j == new.len() || common[(i + 1) * columns + j] >= common[i * columns + j + 1])
        {
            lines.push(Line::Removed(old[i]));
            i += 1;
        } else {
            lines.push(Line::Added(new[j]));
            j += 1;
        }
    }
    lines
}

/// Ranges of the script shown as hunks: each change with its context,
/// changes closer than twice the context joined.
fn hunks(script: &[Line<'_>]) -> Vec<(usize, usize)> {
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for (index, line) in script.iter().enumerate() {
        if matches!(line, Line::Same(_)) {
            continue;
        }
        let start = index.saturating_sub(CONTEXT);
        let end = (index + 1 + CONTEXT).min(script.len());
        match hunks.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = end,
            _ => hunks.push((start, end)),
        }
    }
    hunks
}

fn write_hunk(out: &mut String, script: &[Line<'_>], (start, end): (usize, usize)) {
    let counts = |upto: usize| {
        script[..upto]
            .iter()
            .fold((0, 0), |(old, new), line| match line {
                Line::Same(_) => (old + 1, new + 1),
                Line::Removed(_) => (old + 1, new),
                Line::Added(_) => (old, new + 1),
            })
    };
    let (old_before, new_before) = counts(start);
    let (old_after, new_after) = counts(end);
    let range = |before: usize, after: usize| {
        let length = after - before;
        // An empty range names the line before it.
        let first = if length == 0 { before } else { before + 1 };
        if length == 1 {
            first.to_string()
        } else {
            format!("{first},{length}")
        }
    };
    let _ = writeln!(
        out,
        "@@ -{} +{} @@",
        range(old_before, old_after),
        range(new_before, new_after)
    );
    for line in &script[start..end] {
        let (mark, text) = match line {
            Line::Same(text) => (' ', text),
            Line::Removed(text) => ('-', text),
            Line::Added(text) => ('+', text),
        };
        out.push(mark);
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn a_changed_line_gets_three_lines_of_context_and_counts() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified("p.yaml", old, new),
            "--- a/p.yaml\n+++ b/p.yaml\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn removals_and_additions_far_apart_are_two_hunks() {
        let old: String = (1..=20).map(|n| format!("{n}\n")).collect();
        let new: String = (1..=20)
            .filter(|n| *n != 2)
            .map(|n| {
                if n == 19 {
                    "19\nnew\n".to_owned()
                } else {
                    format!("{n}\n")
                }
            })
            .collect();
        assert_eq!(
            unified("x", &old, &new),
            "--- a/x\n+++ b/x\n@@ -1,5 +1,4 @@\n 1\n-2\n 3\n 4\n 5\n@@ -17,4 +16,5 @@\n 17\n 18\n 19\n+new\n 20\n"
        );
        assert_eq!(unified("x", &old, &old), "");
    }

    #[test]
    fn a_missing_final_newline_is_marked() {
        assert_eq!(
            unified("f", "a\nb", "a\nc"),
            "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
        );
    }
}
