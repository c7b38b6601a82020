//! An [`Audit`] as AUDIT.md, for reviewers.

use std::fmt::Write as _;

use super::Audit;
use crate::load::Skipped;

/// Rows a table of AUDIT.md shows before it says how many more there are
/// (`--report` has them all).
pub const MAX_ROWS: usize = 100;

/// What was read, for the report's first lines.
pub struct Inputs<'a> {
    /// The observed traffic, named.
    pub judged_against: &'a str,
    /// Documents that could not be read, as `file: document N: why`.
    pub errors: &'a [String],
    /// Documents of other kinds.
    pub skipped: &'a [Skipped],
}

fn more(out: &mut String, total: usize) {
    if total > MAX_ROWS {
        let _ = writeln!(out, "\n…and {} more, in the JSON report.", total - MAX_ROWS);
    }
}

fn table<T>(out: &mut String, title: &str, header: &str, rows: &[T], row: impl Fn(&T) -> String) {
    if rows.is_empty() {
        return;
    }
    let columns = header.matches('|').count() - 1;
    let rule = vec![" --- "; columns].join("|");
    let _ = writeln!(out, "\n## {title}\n\n{header}\n|{rule}|");
    for item in rows.iter().take(MAX_ROWS) {
        let _ = writeln!(out, "{}", row(item));
    }
    more(out, rows.len());
}

/// AUDIT.md.
pub fn markdown(audit: &Audit, inputs: &Inputs<'_>) -> String {
    let mut out = String::from("# Policy audit\n\n");
    let _ = writeln!(
        out,
        "{} policies judged against {} ({} observed edges, {} checked) and {} pods.\n",
        audit.policies, inputs.judged_against, audit.edges, audit.checked, audit.pods
    );
    let unused_size: u128 = audit
        .unused
        .iter()
        .map(|unused| unused.size)
        .fold(0, u128::saturating_add);
    out.push_str("| finding | count |\n| --- | ---: |\n");
    let rows = [
        (
            "observed connections denied",
            audit.denied.len().to_string(),
        ),
        (
            "unused allowances (pod pairs × ports)",
            format!("{} ({unused_size})", audit.unused.len()),
        ),
        ("over-broad constructs", audit.broad.len().to_string()),
        (
            "cross-tenant openings (workload pairs)",
            audit.cross_tenant.len().to_string(),
        ),
        (
            "workloads open to every tenant",
            audit.open_to_all.len().to_string(),
        ),
        ("documents not read", inputs.errors.len().to_string()),
        (
            "documents of other kinds, skipped",
            inputs.skipped.len().to_string(),
        ),
    ];
    for (finding, count) in rows {
        let _ = writeln!(out, "| {finding} | {count} |");
    }
    table(
        &mut out,
        "Observed connections denied",
        "| client | server | port | connections | blocked by |",
        &audit.denied,
        |denial| {
            format!(
                "| {} | {} | {}/{} | {} | {} |",
                denial.client,
                denial.server,
                denial.protocol,
                denial.port,
                denial.connections,
                denial.blocked_by.join(", ")
            )
        },
    );
    table(
        &mut out,
        "Allowances never used, largest first",
        "| rule | selects | peer | unused ports | pod pairs × ports |",
        &audit.unused,
        |unused| {
            format!(
                "| `{}` | {} | {} | {} | {} |",
                unused.rule, unused.selected, unused.peer, unused.ports, unused.size
            )
        },
    );
    table(
        &mut out,
        "Over-broad constructs",
        "| policy | rule | construct |",
        &audit.broad,
        |broad| {
            let rule = broad
                .rule
                .as_ref()
                .map_or_else(|| "(whole policy)".to_owned(), |rule| format!("`{rule}`"));
            format!("| `{}` | {rule} | {} |", broad.policy, broad.construct)
        },
    );
    table(
        &mut out,
        "Cross-tenant openings",
        "| client | server | tenants | ports | observed |",
        &audit.cross_tenant,
        |cross| {
            format!(
                "| {} | {} | {} → {} | {} | {} |",
                cross.client,
                cross.server,
                cross.tenants.0,
                cross.tenants.1,
                cross.ports,
                if cross.observed { "yes" } else { "no" }
            )
        },
    );
    list(
        &mut out,
        "Open to every tenant (no policy isolates their ingress)",
        &audit.open_to_all,
        |workload| workload.clone(),
    );
    list(&mut out, "Documents not read", inputs.errors, |error| {
        error.clone()
    });
    list(
        &mut out,
        "Documents of other kinds, skipped",
        inputs.skipped,
        |skipped| {
            let kind = if skipped.kind.is_empty() {
                "no kind"
            } else {
                skipped.kind.as_str()
            };
            format!(
                "{}: document {}: {kind}",
                skipped.file.display(),
                skipped.document
            )
        },
    );
    out
}

fn list<T>(out: &mut String, title: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## {title}\n");
    for item in items.iter().take(MAX_ROWS) {
        let _ = writeln!(out, "- {}", line(item));
    }
    more(out, items.len());
}
