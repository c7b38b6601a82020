//! A [`PolicyDiff`] for people and for CI: a Markdown summary fit for a
//! pull-request comment, and a JUnit report that GitHub, GitLab and Azure
//! DevOps display.

use std::fmt::Write as _;

use super::{FailCondition, Metric, PathChange, PathKind, PolicyDiff};

/// Rows a Markdown table shows before it says how many more there are: a
/// pull-request comment holds at most 65,536 characters.
pub const MAX_ROWS: usize = 50;

/// Why a change fails, in the order the summary tells it; empty when clean.
pub fn failures(diff: &PolicyDiff, conditions: &[FailCondition]) -> Vec<String> {
    let mut failures = Vec::new();
    let broken = diff.broken.len();
    if broken > 0 {
        failures.push(format!("breaks {}", plural(broken, "observed connection")));
    }
    let cross = diff
        .opened
        .iter()
        .filter(|path| path.kind == PathKind::CrossTenant)
        .count();
    if cross > 0 {
        failures.push(format!("opens {}", plural(cross, "cross-tenant path")));
    }
    for condition in conditions.iter().filter(|condition| condition.holds(diff)) {
        failures.push(format!(
            "meets `--fail-on {condition}` ({})",
            condition.metric.count(diff)
        ));
    }
    failures
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn count_of(paths: &[PathChange], kind: PathKind) -> usize {
    paths.iter().filter(|path| path.kind == kind).count()
}

/// The Markdown summary. `judged_against` names the observed traffic (for
/// example `graph observed/graph.json`).
pub fn markdown(diff: &PolicyDiff, conditions: &[FailCondition], judged_against: &str) -> String {
    let failures = failures(diff, conditions);
    let mut out = String::new();
    if failures.is_empty() {
        out.push_str("## flow-policy diff: passes\n\nThe change keeps every observed connection allowed and opens no cross-tenant path.\n\n");
    } else {
        let _ = writeln!(
            out,
            "## flow-policy diff: fails\n\nThe change {}.\n",
            failures.join("; it ")
        );
    }
    let changes = &diff.policies;
    let _ = writeln!(
        out,
        "Policies: {} added, {} modified, {} removed, {} unchanged. Judged against {} ({} observed edges, {} checked) and every pair of {} pods.\n",
        changes.added.len(),
        changes.modified.len(),
        changes.removed.len(),
        changes.unchanged,
        judged_against,
        diff.edges,
        diff.checked,
        diff.pods,
    );
    out.push_str("| what | count |\n| --- | ---: |\n");
    let rows = [
        ("observed connections broken", diff.broken.len()),
        ("observed connections the change allows again", diff.fixed),
        (
            "observed connections denied before and after",
            diff.still_denied,
        ),
        (
            "cross-tenant paths opened",
            count_of(&diff.opened, PathKind::CrossTenant),
        ),
        (
            "paths opened, never observed",
            count_of(&diff.opened, PathKind::Unobserved),
        ),
        (
            "paths opened, observed",
            count_of(&diff.opened, PathKind::Observed),
        ),
        ("paths closed", diff.closed.len()),
    ];
    for (what, count) in rows {
        let _ = writeln!(out, "| {what} | {count} |");
    }
    out.push_str(&crate::mermaid::reports::diff_section(diff));
    broken_section(diff, &mut out);
    let sections = [
        ("Cross-tenant paths opened", PathKind::CrossTenant),
        ("Paths opened, never observed", PathKind::Unobserved),
        ("Paths opened, observed", PathKind::Observed),
    ];
    for (title, kind) in sections {
        let paths: Vec<&PathChange> = diff
            .opened
            .iter()
            .filter(|path| path.kind == kind)
            .collect();
        let column = if kind == PathKind::CrossTenant {
            Column::Tenants
        } else {
            Column::None
        };
        path_section(title, &paths, column, &mut out);
    }
    let closed: Vec<&PathChange> = diff.closed.iter().collect();
    path_section("Paths closed", &closed, Column::Observed, &mut out);
    policies_section(diff, &mut out);
    out
}

fn more(out: &mut String, total: usize) {
    if total > MAX_ROWS {
        let _ = writeln!(
            out,
            "\n…and {} more, in the JUnit report.",
            total - MAX_ROWS
        );
    }
}

fn broken_section(diff: &PolicyDiff, out: &mut String) {
    if diff.broken.is_empty() {
        return;
    }
    out.push_str("\n### Observed connections broken\n\n| client | server | port | connections | last seen | blocked by |\n| --- | --- | --- | ---: | --- | --- |\n");
    for denial in diff.broken.iter().take(MAX_ROWS) {
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {} | {} | {} |",
            denial.client,
            denial.server,
            denial.protocol,
            denial.port,
            denial.connections,
            humantime::format_rfc3339_seconds(denial.last_seen.0),
            denial.blocked_by.join(", ")
        );
    }
    more(out, diff.broken.len());
}

fn tenant(tenant: Option<&String>) -> &str {
    tenant.map_or("none", String::as_str)
}

/// The extra column of a table of paths.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    None,
    Tenants,
    Observed,
}

fn path_section(title: &str, paths: &[&PathChange], column: Column, out: &mut String) {
    if paths.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "\n### {title}\n\n| client | server | ports | pod pairs |"
    );
    out.push_str(match column {
        Column::None => "\n| --- | --- | --- | ---: |\n",
        Column::Tenants => " tenants |\n| --- | --- | --- | ---: | --- |\n",
        Column::Observed => " observed |\n| --- | --- | --- | ---: | --- |\n",
    });
    for path in paths.iter().take(MAX_ROWS) {
        let _ = write!(
            out,
            "| {} | {} | {} | {} |",
            path.client, path.server, path.ports, path.pod_pairs
        );
        match column {
            Column::None => {}
            Column::Tenants => {
                let _ = write!(
                    out,
                    " {} → {} |",
                    tenant(path.client_tenant.as_ref()),
                    tenant(path.server_tenant.as_ref())
                );
            }
            Column::Observed => {
                let observed = path.kind == PathKind::Observed;
                out.push_str(if observed { " yes |" } else { " no |" });
            }
        }
        out.push('\n');
    }
    more(out, paths.len());
}

fn policies_section(diff: &PolicyDiff, out: &mut String) {
    let changes = &diff.policies;
    if changes.added.is_empty() && changes.modified.is_empty() && changes.removed.is_empty() {
        return;
    }
    out.push_str("\n### Policies changed\n\n");
    for (what, names) in [
        ("added", &changes.added),
        ("modified", &changes.modified),
        ("removed", &changes.removed),
    ] {
        if !names.is_empty() {
            let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
            let _ = writeln!(out, "- {what}: {}", quoted.join(", "));
        }
    }
}

/// `text` fit for an XML attribute.
fn xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\n' => escaped.push_str("&#10;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// One test case: its name, and its failure message when it fails.
type Case = (String, Option<String>);

fn suite(out: &mut String, name: &str, cases: &[Case]) {
    let failures = cases
        .iter()
        .filter(|(_, failure)| failure.is_some())
        .count();
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
        xml(name),
        cases.len()
    );
    for (case, failure) in cases {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(name),
            xml(case)
        );
        match failure {
            None => out.push_str("/>\n"),
            Some(message) => {
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\"/>\n    </testcase>",
                    xml(message)
                );
            }
        }
    }
    out.push_str("  </testsuite>\n");
}

fn path_name(path: &PathChange) -> String {
    format!("{} -> {} {}", path.client, path.server, path.ports)
}

/// The JUnit report: observed connections (a failure per broken one),
/// cross-tenant paths (a failure per opened one), and one case per
/// `--fail-on` condition.
pub fn junit(diff: &PolicyDiff, conditions: &[FailCondition]) -> String {
    let mut observed: Vec<Case> = diff
        .broken
        .iter()
        .map(|denial| {
            (
                format!(
                    "{} -> {} {}/{}",
                    denial.client, denial.server, denial.protocol, denial.port
                ),
                Some(format!(
                    "broken: blocked by {}",
                    denial.blocked_by.join(", ")
                )),
            )
        })
        .collect();
    if observed.is_empty() {
        observed.push((
            format!("{} observed edges checked stay allowed", diff.checked),
            None,
        ));
    }
    let mut cross: Vec<Case> = diff
        .opened
        .iter()
        .filter(|path| path.kind == PathKind::CrossTenant)
        .map(|path| {
            (
                path_name(path),
                Some(format!(
                    "opens a path from tenant {} to tenant {} ({})",
                    tenant(path.client_tenant.as_ref()),
                    tenant(path.server_tenant.as_ref()),
                    plural(
                        usize::try_from(path.pod_pairs).unwrap_or(usize::MAX),
                        "pod pair"
                    )
                )),
            )
        })
        .collect();
    if cross.is_empty() {
        cross.push(("no cross-tenant path opened".to_owned(), None));
    }
    // Unobserved openings fail only when a condition on them holds.
    let refused = conditions
        .iter()
        .any(|condition| condition.metric == Metric::UnobservedPaths && condition.holds(diff));
    let unobserved: Vec<Case> = diff
        .opened
        .iter()
        .filter(|path| path.kind == PathKind::Unobserved)
        .map(|path| {
            let failure = refused.then(|| "opened, never observed".to_owned());
            (path_name(path), failure)
        })
        .collect();
    let condition_cases: Vec<Case> = conditions
        .iter()
        .map(|condition| {
            let count = condition.metric.count(diff);
            (
                format!("--fail-on {condition}"),
                condition.holds(diff).then(|| format!("{count} found")),
            )
        })
        .collect();
    let all = [
        ("observed connections", observed),
        ("cross-tenant paths", cross),
        ("paths opened, never observed", unobserved),
        ("conditions", condition_cases),
    ];
    let tests: usize = all.iter().map(|(_, cases)| cases.len()).sum();
    let failed: usize = all
        .iter()
        .flat_map(|(_, cases)| cases)
        .filter(|(_, failure)| failure.is_some())
        .count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"flow-policy diff\" tests=\"{tests}\" failures=\"{failed}\">\n"
    );
    for (name, cases) in &all {
        if !cases.is_empty() {
            suite(&mut out, name, cases);
        }
    }
    out.push_str("</testsuites>\n");
    out
}
