//! The alert rules in `deploy/monitoring/` under Prometheus's own judge,
//! promtool (Debian's `prometheus` package, which `cargo xtask setup`
//! installs): the rules file passes `promtool check rules`, the unit tests
//! in `deploy/monitoring/tests/` pass `promtool test rules`, every alert is
//! tested both firing and silent, and a wrong expectation or a broken rule
//! fails them. Without promtool these tests fail: they never skip.
//! (`cargo test -p xtask` holds the rules to their source, alerts.yaml.)

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn rules_file() -> PathBuf {
    monitoring().join("prometheus/flow-agent.rules.yml")
}

/// The unit test files, sorted.
fn test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(monitoring().join("tests"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yml"))
        .collect();
    files.sort();
    files
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs `promtool ARGS` in `directory`: whether it succeeded, and its
/// output. A missing promtool is a failure.
fn promtool(directory: &Path, args: &[&Path]) -> (bool, String) {
    let output = Command::new("promtool")
        .current_dir(directory)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): `cargo xtask setup` installs it (Debian's prometheus package)"
            )
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The alerts of the rules file, in order.
fn alerts() -> Vec<String> {
    yaml(&rules_file())["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .map(|rule| rule["alert"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_rules_file_passes_promtool_check() {
    let (success, output) = promtool(
        &monitoring(),
        &[Path::new("check"), Path::new("rules"), &rules_file()],
    );
    assert!(success, "{output}");
    assert!(output.contains("SUCCESS: 9 rules found"), "{output}");
    assert_eq!(
        alerts(),
        [
            "FlowAgentPolicyViolations",
            "FlowAgentCrossTenantEdgeLearned",
            "FlowAgentApiRecordsLost",
            "FlowAgentOutputRecordsDropped",
            "FlowAgentFlowMapFull",
            "FlowAgentNotReady",
            "FlowAgentNoInterfaces",
            "FlowAgentIdentityNotSynced",
            "FlowAgentDrainSlow",
        ]
    );
}

#[test]
fn every_alert_passes_its_promtool_tests() {
    let files = test_files();
    assert_eq!(files.len(), 4, "{files:?}");
    let mut args = vec![Path::new("test"), Path::new("rules")];
    args.extend(files.iter().map(PathBuf::as_path));
    let (success, output) = promtool(&monitoring().join("tests"), &args);
    assert!(success, "{output}");
    assert_eq!(output.matches("  SUCCESS").count(), files.len(), "{output}");
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    // For each alert: (evaluations expecting it to fire, expecting silence).
    let mut tested: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in test_files() {
        let tests = yaml(&file);
        assert_eq!(
            tests["rule_files"],
            serde_json::json!(["../prometheus/flow-agent.rules.yml"]),
            "{}",
            file.display()
        );
        for test in tests["tests"].as_array().unwrap() {
            for evaluation in test["alert_rule_test"].as_array().unwrap() {
                let name = evaluation["alertname"].as_str().unwrap().to_owned();
                let counts = tested.entry(name).or_default();
                match evaluation["exp_alerts"].as_array() {
                    Some(expected) if !expected.is_empty() => counts.0 += 1,
                    _ => counts.1 += 1,
                }
            }
        }
    }
    for alert in alerts() {
        let (firing, silent) = tested.remove(&alert).unwrap_or_default();
        assert!(
            firing > 0 && silent > 0,
            "{alert}: {firing} evaluations expect it to fire, {silent} to stay silent"
        );
    }
    assert!(
        tested.is_empty(),
        "tests of alerts that do not exist: {tested:?}"
    );
}

/// `test` copied into `directory` with `rules` as its rules file; returns
/// the copy's path.
fn copy_test(directory: &Path, test: &str, rules: &Path, edit: Option<(&str, &str)>) -> PathBuf {
    let mut text = std::fs::read_to_string(monitoring().join("tests").join(test))
        .unwrap()
        .replace(
            "- ../prometheus/flow-agent.rules.yml",
            &format!("- {}", rules.display()),
        );
    if let Some((from, to)) = edit {
        assert!(text.contains(from), "{test} has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let copy = directory.join(test);
    std::fs::write(&copy, text).unwrap();
    copy
}

#[test]
fn a_wrong_expectation_or_a_broken_rule_fails_promtool() {
    let directory = tempfile::tempdir().unwrap();
    let test = |copy: &Path| {
        promtool(
            directory.path(),
            &[Path::new("test"), Path::new("rules"), copy],
        )
    };
    // The copy as it is passes: what fails below is the change alone.
    let unchanged = copy_test(directory.path(), "policy.yml", &rules_file(), None);
    let (success, output) = test(&unchanged);
    assert!(success, "{output}");

    // An alert expected with the wrong severity.
    let wrong = copy_test(
        directory.path(),
        "policy.yml",
        &rules_file(),
        Some((
            "{severity: warning, namespace: shop, tenant: acme}",
            "{severity: critical, namespace: shop, tenant: acme}",
        )),
    );
    let (success, output) = test(&wrong);
    assert!(!success, "{output}");
    assert!(
        output.contains("alertname: FlowAgentPolicyViolations, time: 3m"),
        "{output}"
    );

    // The violations rule without its case of new series: a namespace's
    // first violation, whose series appears already at 1, goes unseen.
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let new_series =
        "flowagent_policy_violations_total unless flowagent_policy_violations_total offset 5m";
    assert!(rules.contains(new_series));
    let broken = directory.path().join("broken.rules.yml");
    std::fs::write(
        &broken,
        rules.replace(
            new_series,
            "increase(flowagent_policy_violations_total[5m])",
        ),
    )
    .unwrap();
    let (success, output) = promtool(
        directory.path(),
        &[Path::new("check"), Path::new("rules"), &broken],
    );
    assert!(success, "still a valid rule: {output}");
    let copy = copy_test(directory.path(), "policy.yml", &broken, None);
    let (success, output) = test(&copy);
    assert!(!success, "{output}");
    assert!(
        output.contains("alertname: FlowAgentPolicyViolations, time: 3m"),
        "{output}"
    );
}
