//! `cargo xtask monitoring`: writes the alert rules in both of their forms
//! from their one source, `deploy/monitoring/alerts.yaml`:
//!
//! - `deploy/monitoring/prometheus/flow-agent.rules.yml`, a Prometheus rules
//!   file (`rule_files:`, `promtool check rules`);
//! - `deploy/monitoring/prometheusrule.yaml`, the same groups as a
//!   Prometheus Operator `PrometheusRule` in the agents' namespace.
//!
//! Each alert's `runbook_url` is the source's `runbook` and the alert's name
//! in lower case: the anchor of its section in `deploy/README.md`, which
//! must exist. `--check` writes nothing and fails when a file differs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// The source, relative to the workspace.
pub(crate) const SOURCE: &str = "deploy/monitoring/alerts.yaml";
/// The Prometheus rules file, relative to the workspace.
pub(crate) const RULES_FILE: &str = "deploy/monitoring/prometheus/flow-agent.rules.yml";
/// The PrometheusRule, relative to the workspace.
pub(crate) const PROMETHEUS_RULE: &str = "deploy/monitoring/prometheusrule.yaml";
/// The runbooks, relative to the workspace.
const RUNBOOKS: &str = "deploy/README.md";

/// The namespace the agents run in (`deploy/base/kustomization.yaml`).
const NAMESPACE: &str = "flow-agent";

const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// `deploy/monitoring/alerts.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    /// The runbooks' page: an alert's runbook is its anchor there.
    runbook: String,
    groups: Vec<SourceGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceGroup {
    name: String,
    alerts: Vec<SourceAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceAlert {
    name: String,
    severity: String,
    #[serde(rename = "for")]
    pending: String,
    expr: String,
    summary: String,
    description: String,
}

/// A Prometheus rules file's content (`groups:`), as both forms carry it.
#[derive(Debug, Serialize)]
struct Groups {
    groups: Vec<Group>,
}

#[derive(Debug, Serialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Serialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    pending: String,
    labels: RuleLabels,
    annotations: Annotations,
}

#[derive(Debug, Serialize)]
struct RuleLabels {
    severity: String,
}

#[derive(Debug, Serialize)]
struct Annotations {
    summary: String,
    description: String,
    runbook_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PrometheusRule<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: &'a Groups,
}

#[derive(Debug, Serialize)]
struct Metadata {
    name: &'static str,
    namespace: &'static str,
    labels: MetadataLabels,
}

#[derive(Debug, Serialize)]
struct MetadataLabels {
    #[serde(rename = "app.kubernetes.io/name")]
    name: &'static str,
}

/// The two generated files: path (relative to the workspace) and text.
pub(crate) type Generated = [(&'static str, String); 2];

/// The anchor GitHub gives a heading made of an alert name.
fn anchor(alert: &str) -> String {
    alert.to_ascii_lowercase()
}

/// Checks one alert of the source; `runbooks` is `deploy/README.md`.
fn check_alert(alert: &SourceAlert, runbooks: &str) -> Result<()> {
    let SourceAlert {
        name,
        severity,
        pending,
        expr,
        summary,
        description,
    } = alert;
    if !name.starts_with("FlowAgent") || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("alert {name:?}: a name is FlowAgent and then letters and digits (UpperCamelCase)");
    }
    if !SEVERITIES.contains(&severity.as_str()) {
        bail!(
            "alert {name}: severity {severity:?} is not one of {}",
            SEVERITIES.join(", ")
        );
    }
    let unit = pending.trim_start_matches(|c: char| c.is_ascii_digit());
    if unit.len() == pending.len() || !["s", "m", "h"].contains(&unit) {
        bail!("alert {name}: `for: {pending}` is not a duration such as 0m, 30s or 5m");
    }
    if expr.trim().is_empty() || summary.trim().is_empty() {
        bail!("alert {name}: expr and summary must not be empty");
    }
    if !description.contains("$labels.") {
        bail!("alert {name}: the description names no label (`{{{{ $labels.instance }}}}`)");
    }
    let heading = runbooks
        .lines()
        .any(|line| line.starts_with('#') && line.trim_start_matches('#').trim() == name);
    if !heading {
        bail!("alert {name}: {RUNBOOKS} has no heading `### {name}`, its runbook");
    }
    Ok(())
}

/// The rules file's groups from the source's; checks every alert.
fn groups(source: &Source, runbooks: &str) -> Result<Groups> {
    let mut names = std::collections::BTreeSet::new();
    let mut groups = Vec::new();
    for SourceGroup { name, alerts } in &source.groups {
        if alerts.is_empty() {
            bail!("group {name} has no alert");
        }
        let mut rules = Vec::new();
        for alert in alerts {
            check_alert(alert, runbooks)?;
            if !names.insert(alert.name.as_str()) {
                bail!("alert {} is defined twice", alert.name);
            }
            rules.push(Rule {
                alert: alert.name.clone(),
                expr: alert.expr.trim().to_owned(),
                pending: alert.pending.clone(),
                labels: RuleLabels {
                    severity: alert.severity.clone(),
                },
                annotations: Annotations {
                    summary: alert.summary.trim().to_owned(),
                    description: alert.description.trim().to_owned(),
                    runbook_url: format!("{}#{}", source.runbook, anchor(&alert.name)),
                },
            });
        }
        groups.push(Group {
            name: name.clone(),
            rules,
        });
    }
    Ok(Groups { groups })
}

/// Both forms from the source text; `runbooks` is `deploy/README.md`.
pub(crate) fn generate(source: &str, runbooks: &str) -> Result<Generated> {
    let source: Source =
        yaml_serde::from_str(source).with_context(|| format!("{SOURCE} is not valid"))?;
    let groups = groups(&source, runbooks)?;
    let header = format!(
        "# Generated by `cargo xtask monitoring` from {SOURCE}: edit that file,\n\
         # not this one.\n"
    );
    let rules = header.clone() + &yaml_serde::to_string(&groups)?;
    let resource = PrometheusRule {
        api_version: "monitoring.coreos.com/v1",
        kind: "PrometheusRule",
        metadata: Metadata {
            name: "flow-agent",
            namespace: NAMESPACE,
            labels: MetadataLabels { name: "flow-agent" },
        },
        spec: &groups,
    };
    let resource = header + &yaml_serde::to_string(&resource)?;
    Ok([(RULES_FILE, rules), (PROMETHEUS_RULE, resource)])
}

fn read(root: &Path, path: &str) -> Result<String> {
    std::fs::read_to_string(root.join(path)).with_context(|| format!("cannot read {path}"))
}

/// The generated files, from the source in the workspace at `root`.
pub(crate) fn generate_in(root: &Path) -> Result<Generated> {
    generate(&read(root, SOURCE)?, &read(root, RUNBOOKS)?)
}

/// The generated files that differ from what `root` holds.
pub(crate) fn stale(root: &Path, generated: &Generated) -> Vec<PathBuf> {
    generated
        .iter()
        .filter(|(path, text)| std::fs::read_to_string(root.join(path)).ok().as_ref() != Some(text))
        .map(|(path, _)| PathBuf::from(path))
        .collect()
}

/// Writes both forms, or with `check` fails if either differs.
pub(crate) fn run(check: bool) -> Result<()> {
    let root = crate::workspace_root();
    let generated = generate_in(&root)?;
    let stale = stale(&root, &generated);
    if check {
        if !stale.is_empty() {
            bail!(
                "{} differ from {SOURCE}: run `cargo xtask monitoring`",
                stale
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return Ok(());
    }
    for (path, text) in &generated {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for path in stale {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_rules_are_what_the_source_makes() {
        let root = crate::workspace_root();
        let generated = generate_in(&root).unwrap();
        assert_eq!(
            stale(&root, &generated),
            Vec::<PathBuf>::new(),
            "run `cargo xtask monitoring`"
        );
    }

    const RUNBOOKS_TEXT: &str = "# Runbooks\n\n### FlowAgentTest\n\nWhat to do.\n";

    fn source(alert: &str) -> String {
        format!("runbook: https://example.com/README.md\ngroups:\n- name: g\n  alerts:\n{alert}")
    }

    const ALERT: &str = "  - name: FlowAgentTest\n    severity: warning\n    for: 5m\n    expr: |\n      up == 0\n    summary: Down.\n    description: '{{ $labels.instance }} is down.'\n";

    #[test]
    fn both_forms_carry_the_same_groups_and_the_runbook_anchor() {
        let [(rules_path, rules), (resource_path, resource)] =
            generate(&source(ALERT), RUNBOOKS_TEXT).unwrap();
        assert_eq!((rules_path, resource_path), (RULES_FILE, PROMETHEUS_RULE));
        let body = "groups:\n\
                    - name: g\n  \
                      rules:\n  \
                      - alert: FlowAgentTest\n    \
                        expr: up == 0\n    \
                        for: 5m\n    \
                        labels:\n      \
                          severity: warning\n    \
                        annotations:\n      \
                          summary: Down.\n      \
                          description: '{{ $labels.instance }} is down.'\n      \
                          runbook_url: https://example.com/README.md#flowagenttest\n";
        let header = "# Generated by `cargo xtask monitoring` from deploy/monitoring/alerts.yaml: edit that file,\n# not this one.\n";
        assert_eq!(rules, format!("{header}{body}"));
        let indented: String = body.lines().map(|line| format!("  {line}\n")).collect();
        assert_eq!(
            resource,
            format!(
                "{header}apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: flow-agent\n  namespace: flow-agent\n  labels:\n    app.kubernetes.io/name: flow-agent\nspec:\n{indented}"
            )
        );
    }

    #[test]
    fn a_bad_source_is_refused_with_the_alert_named() {
        let refused = |alert: String, runbooks: &str| {
            format!("{:#}", generate(&source(&alert), runbooks).unwrap_err())
        };
        assert!(
            refused(ALERT.replace("warning", "page"), RUNBOOKS_TEXT).contains(
                "alert FlowAgentTest: severity \"page\" is not one of critical, warning, info"
            ),
        );
        assert!(
            refused(ALERT.replace("5m", "soon"), RUNBOOKS_TEXT)
                .contains("`for: soon` is not a duration")
        );
        assert!(
            refused(ALERT.replace("$labels.instance", "$value"), RUNBOOKS_TEXT)
                .contains("the description names no label")
        );
        assert!(
            refused(ALERT.to_owned(), "# Runbooks\n")
                .contains("deploy/README.md has no heading `### FlowAgentTest`")
        );
        assert!(
            refused(
                ALERT.replace("FlowAgentTest", "flow_agent_test"),
                RUNBOOKS_TEXT
            )
            .contains("UpperCamelCase")
        );
        assert!(refused(format!("{ALERT}{ALERT}"), RUNBOOKS_TEXT).contains("defined twice"));
        assert!(
            refused(ALERT.replace("summary", "sumary"), RUNBOOKS_TEXT)
                .contains("alerts.yaml is not valid")
        );
    }
}
