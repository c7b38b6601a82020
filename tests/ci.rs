//! The CI templates in `deploy/ci/`, judged by the tools of their formats:
//! the GitHub Actions workflow by actionlint, which also runs shellcheck over
//! its `run:` scripts, with no finding; the Azure Pipelines template and the
//! example pipeline that uses it by Microsoft's Azure Pipelines schema
//! (`service-schema.json` as check-jsonschema carries it, its sha256 pinned),
//! and their `bash:` steps by shellcheck. Broken copies show that each judge
//! fails when it should. Both files are also read for what the `policy diff`
//! contract and the PR flow need: the command line, the report, the comment
//! before the failing status, least privilege, pinned actions.
//!
//! The judges come from `cargo xtask setup`; a missing one fails the test.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Pinned, with the schema's sha256, by `CI_PYTHON_PACKAGES` in
/// xtask/src/setup.rs.
const ACTIONLINT_VERSION: &str = "1.17.0";
const AZURE_PIPELINES_SCHEMA_SHA256: &str =
    "f00a9630f6550204148634d9a13f634b5750a225559886effe09a751482f0459";

const SETUP: &str = "run `cargo xtask setup` (as root) to install it";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn github_workflow() -> PathBuf {
    workspace().join("deploy/ci/github/policy-diff.yml")
}

fn azure_template() -> PathBuf {
    workspace().join("deploy/ci/azure/policy-diff.yml")
}

fn azure_example() -> PathBuf {
    workspace().join("deploy/ci/azure/azure-pipelines.yml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn yaml(text: &str) -> Value {
    let value: Value = yaml_serde::from_str(text).unwrap();
    assert!(value.is_object(), "not a YAML mapping: {value}");
    value
}

/// `text` with its one occurrence of `from` replaced: a broken copy.
/// A copy of `text` with `from` replaced by `to`, saved as `name` in a
/// directory removed when the returned handle drops; also its text.
fn broken_copy(
    text: &str,
    from: &str,
    to: &str,
    name: &str,
) -> (tempfile::TempDir, PathBuf, String) {
    let broken = replace_once(text, from, to);
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join(name);
    std::fs::write(&file, &broken).unwrap();
    (directory, file, broken)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}

/// The 1-based number of the line that contains `needle`, found once.
fn line_of(text: &str, needle: &str) -> u64 {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on one line");
    u64::try_from(lines[0]).unwrap()
}

/// The CI judges' virtual environment (`cargo xtask test` names it).
fn venv() -> PathBuf {
    std::env::var_os("FLOW_AGENT_TEST_CI_VENV").map_or_else(
        || workspace().join("target").join("python-ci"),
        PathBuf::from,
    )
}

fn venv_program(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(path.exists(), "{} is missing: {SETUP}", path.display());
    path
}

fn shellcheck() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|directory| directory.join("shellcheck"))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("shellcheck is not on PATH: {SETUP}"))
}

/// One actionlint finding: line, rule and message.
#[derive(Debug)]
struct Finding {
    line: u64,
    kind: String,
    message: String,
}

/// actionlint's findings for `file`, shellcheck included, pyflakes off (the
/// workflow has no Python step).
fn actionlint(file: &Path) -> Vec<Finding> {
    let shellcheck = shellcheck();
    let output = Command::new(venv_program("actionlint"))
        .args(["-no-color", "-format", "{{json .}}", "-pyflakes="])
        .arg("-shellcheck")
        .arg(&shellcheck)
        .arg(file)
        .output()
        .unwrap();
    let code = output.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "actionlint could not check {}: {code:?} {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let findings: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(code == Some(0), findings.is_empty(), "{findings:?}");
    findings
        .iter()
        .map(|finding| Finding {
            line: finding["line"].as_u64().unwrap(),
            kind: finding["kind"].as_str().unwrap().to_owned(),
            message: finding["message"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The Azure Pipelines schema in the virtual environment, after checking
/// that it is the pinned one.
fn azure_pipelines_schema() -> PathBuf {
    let output = Command::new(venv_program("python"))
        .args([
            "-c",
            "import importlib.resources as r; \
             print(r.files('check_jsonschema.builtin_schemas.vendor') / 'azure-pipelines.json')",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check-jsonschema is missing from {}: {SETUP}",
        venv().display()
    );
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let digest: String = Sha256::digest(std::fs::read(&path).unwrap())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        digest,
        AZURE_PIPELINES_SCHEMA_SHA256,
        "{} is not the pinned schema: {SETUP}",
        path.display()
    );
    path
}

/// check-jsonschema's JSON report on `file` against the Azure Pipelines
/// schema. The schema's patterns escape characters (`\/`, `\:`) that
/// ECMAScript regexes reject in unicode mode: they are read in the
/// non-unicode mode JavaScript, the schema's home, uses. The transform lifts
/// what `${{ }}` keys (conditional insertion, each) hold, as Microsoft's
/// language server does.
fn check_azure(file: &Path) -> Value {
    let output = Command::new(venv_program("check-jsonschema"))
        .args(["--output-format", "json", "--regex-variant", "nonunicode"])
        .args(["--data-transform", "azure-pipelines", "--schemafile"])
        .arg(azure_pipelines_schema())
        .arg(file)
        .output()
        .unwrap();
    let code = output.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "check-jsonschema could not check {}: {code:?} {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(code == Some(0), report["status"] == "ok", "{report}");
    report
}

/// The deepest error check-jsonschema found in each failing document, as
/// (path, message).
fn azure_errors(report: &Value) -> Vec<(String, String)> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            let best = if error["best_deep_match"].is_object() {
                &error["best_deep_match"]
            } else {
                error
            };
            (
                best["path"].as_str().unwrap().to_owned(),
                best["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// shellcheck's findings (gcc format) for a bash script.
fn shellcheck_bash(script: &str) -> Vec<String> {
    let mut child = Command::new(shellcheck())
        .args(["--shell=bash", "--format=gcc", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let findings: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        output.status.success(),
        findings.is_empty(),
        "{findings:?} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    findings
}

/// The steps of the Azure template's one job.
fn azure_steps(template: &Value) -> &Vec<Value> {
    let jobs = template["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    jobs[0]["steps"].as_array().unwrap()
}

fn step_named<'a>(steps: &'a [Value], key: &str, name: &str) -> (usize, &'a Value) {
    steps
        .iter()
        .enumerate()
        .find(|(_, step)| step[key] == name)
        .unwrap_or_else(|| panic!("no step with {key}: {name}"))
}

#[test]
fn actionlint_finds_nothing_in_the_github_workflow() {
    let version = Command::new(venv_program("actionlint"))
        .arg("-version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert_eq!(
        version.lines().next().unwrap().split_whitespace().last(),
        Some(ACTIONLINT_VERSION),
        "{version}"
    );
    let findings = actionlint(&github_workflow());
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn actionlint_reports_a_mistyped_key() {
    let text = read(&github_workflow());
    let (_directory, file, broken) = broken_copy(
        &text,
        "    runs-on: ubuntu-latest\n",
        "    run-on: ubuntu-latest\n",
        "run-on.yml",
    );
    let findings = actionlint(&file);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert_eq!(findings[0].line, line_of(&broken, "  diff:"));
    assert_eq!(findings[0].kind, "syntax-check");
    assert_eq!(
        findings[0].message,
        r#""runs-on" section is missing in job "diff""#
    );
    assert_eq!(findings[1].line, line_of(&broken, "run-on:"));
    assert_eq!(findings[1].kind, "syntax-check");
    assert!(
        findings[1]
            .message
            .starts_with(r#"unexpected key "run-on" for "job" section"#),
        "{}",
        findings[1].message
    );
}

#[test]
fn actionlint_reports_an_unknown_context() {
    let text = read(&github_workflow());
    let (_directory, file, broken) = broken_copy(
        &text,
        "STATUS: ${{ steps.diff.outputs.status }}",
        "STATUS: ${{ step.diff.outputs.status }}",
        "context.yml",
    );
    let findings = actionlint(&file);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].line, line_of(&broken, "${{ step.diff"));
    assert_eq!(findings[0].kind, "expression");
    assert!(
        findings[0]
            .message
            .starts_with(r#"undefined variable "step""#),
        "{}",
        findings[0].message
    );
}

#[test]
fn actionlint_runs_shellcheck_over_run_scripts() {
    let text = read(&github_workflow());
    let (_directory, file, broken) = broken_copy(
        &text,
        r#">> "$GITHUB_OUTPUT""#,
        r#">> $GITHUB_OUTPUT"#,
        "unquoted.yml",
    );
    let findings = actionlint(&file);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].line, line_of(&broken, ">> $GITHUB_OUTPUT"));
    assert_eq!(findings[0].kind, "shellcheck");
    assert!(
        findings[0].message.contains("SC2086"),
        "{}",
        findings[0].message
    );
}

#[test]
fn azure_files_match_the_azure_pipelines_schema() {
    for file in [azure_template(), azure_example()] {
        let report = check_azure(&file);
        assert_eq!(report["status"], "ok", "{}: {report:#}", file.display());
    }
}

/// Checks a copy of `text` with `from` replaced by `to`, saved as `name`.
fn check_azure_broken(text: &str, from: &str, to: &str, name: &str) -> Value {
    let (_directory, file, _) = broken_copy(text, from, to, name);
    check_azure(&file)
}

#[test]
fn the_schema_rejects_an_unknown_job_key() {
    let text = read(&azure_template());
    let report = check_azure_broken(&text, "\n    steps:\n", "\n    step:\n", "step.yml");
    assert_eq!(report["status"], "fail");
    assert_eq!(
        azure_errors(&report),
        [(
            "$.jobs[0]".to_owned(),
            "Additional properties are not allowed ('step' was unexpected)".to_owned()
        )]
    );
}

#[test]
fn the_schema_rejects_an_unknown_pipeline_key() {
    let text = read(&azure_example());
    let report = check_azure_broken(&text, "\njobs:\n", "\njob:\n", "azure-pipelines.yml");
    assert_eq!(report["status"], "fail");
    assert_eq!(
        azure_errors(&report),
        [(
            "$".to_owned(),
            "Additional properties are not allowed ('job' was unexpected)".to_owned()
        )]
    );
}

#[test]
fn the_schema_rejects_an_unknown_task_input() {
    let text = read(&azure_template());
    let report = check_azure_broken(
        &text,
        "testResultsFormat: JUnit",
        "testResultFormat: JUnit",
        "input.yml",
    );
    assert_eq!(report["status"], "fail");
    let (index, _) = step_named(azure_steps(&yaml(&text)), "task", "PublishTestResults@2");
    let errors = azure_errors(&report);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .0
            .starts_with(&format!("$.jobs[0].steps[{index}]")),
        "{errors:?}"
    );
}

#[test]
fn shellcheck_finds_nothing_in_the_azure_scripts() {
    let template = yaml(&read(&azure_template()));
    let mut scripts = 0;
    for step in azure_steps(&template) {
        if let Some(script) = step["bash"].as_str() {
            let findings = shellcheck_bash(script);
            assert!(
                findings.is_empty(),
                "{}: {findings:#?}",
                step["displayName"]
            );
            scripts += 1;
        }
    }
    assert_eq!(scripts, 5);
    let broken = "echo $REPORT_DIR\n";
    let findings = shellcheck_bash(broken);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].contains("[SC2086]"), "{findings:?}");
}

/// The option names of the contract, and whether each takes a value.
const CONTRACT_OPTIONS: [(&str, bool); 8] = [
    ("--graph", true),
    ("--flows", true),
    ("--server", true),
    ("--inventory", true),
    ("--kubernetes", false),
    ("--summary", true),
    ("--junit", true),
    ("--fail-on", true),
];

/// The words of the `flow-policy diff` command in `script`, up to its
/// redirections, without quotes.
fn diff_command(script: &str) -> Vec<String> {
    let joined = script.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("flow-policy diff "))
        .collect();
    assert_eq!(lines.len(), 1, "{script}");
    lines[0]
        .split_whitespace()
        .take_while(|word| !word.starts_with("2>") && !word.starts_with("||"))
        .map(|word| word.trim_matches('"').to_owned())
        .collect()
}

/// The options a script collects into `extra` for the command.
fn extra_options(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("extra+=("))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// Checks a command line against the contract; returns its options and
/// their values.
fn check_contract(words: &[String], extra: &[String]) -> Vec<(String, String)> {
    assert_eq!(
        words[..4],
        [
            "flow-policy",
            "diff",
            "$BASE_DIR/$POLICY_DIR",
            "$PR_DIR/$POLICY_DIR"
        ]
    );
    let mut options = Vec::new();
    let mut rest = words[4..].iter();
    while let Some(word) = rest.next() {
        if word == "${extra[@]}" {
            continue;
        }
        let (_, takes_value) = CONTRACT_OPTIONS
            .iter()
            .find(|(name, _)| name == word)
            .unwrap_or_else(|| panic!("{word} is not in the contract"));
        let value = if *takes_value {
            rest.next().unwrap().clone()
        } else {
            String::new()
        };
        options.push((word.clone(), value));
    }
    assert!(words.iter().any(|word| word == "${extra[@]}"));
    assert_eq!(extra, ["--inventory", "--fail-on"]);
    let names: BTreeSet<&str> = options.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["--graph", "--junit", "--summary"]));
    assert_eq!(options.len(), 3, "{options:?}");
    options
}

#[test]
fn both_run_policy_diff_as_the_contract_says() {
    let workflow = yaml(&read(&github_workflow()));
    let steps = workflow["jobs"]["diff"]["steps"].as_array().unwrap();
    let (_, diff) = step_named(steps, "id", "diff");
    let script = diff["run"].as_str().unwrap();
    let github = check_contract(&diff_command(script), &extra_options(script));
    assert_eq!(
        github,
        [
            ("--graph".to_owned(), "$GRAPH".to_owned()),
            ("--summary".to_owned(), "summary.md".to_owned()),
            ("--junit".to_owned(), "junit.xml".to_owned()),
        ]
    );

    let template = yaml(&read(&azure_template()));
    let (_, diff) = step_named(
        azure_steps(&template),
        "displayName",
        "Diff the policies against observed traffic",
    );
    let script = diff["bash"].as_str().unwrap();
    let azure = check_contract(&diff_command(script), &extra_options(script));
    assert_eq!(
        azure,
        [
            ("--graph".to_owned(), "$GRAPH".to_owned()),
            ("--summary".to_owned(), "$REPORT_DIR/summary.md".to_owned()),
            ("--junit".to_owned(), "$REPORT_DIR/junit.xml".to_owned()),
        ]
    );
}

#[test]
fn the_github_workflow_comments_before_it_fails() {
    let text = read(&github_workflow());
    let workflow = yaml(&text);
    assert_eq!(
        workflow["on"]["pull_request"]["paths"],
        json!(["policies/**"])
    );
    assert_eq!(workflow["env"]["POLICY_DIR"], "policies");
    assert_eq!(workflow["permissions"], json!({}));
    let job = &workflow["jobs"]["diff"];
    assert_eq!(
        job["permissions"],
        json!({"contents": "read", "pull-requests": "write"})
    );
    let steps = job["steps"].as_array().unwrap();
    let names: Vec<&str> = steps
        .iter()
        .map(|step| step["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Check out the pull request (merged into its base)",
            "Check out the base",
            "Cache flow-policy",
            "Install flow-policy",
            "Diff the policies against observed traffic",
            "Post or update the PR comment",
            "Upload the JUnit report",
            "Fail with the diff's exit status",
        ]
    );
    let install = steps[3]["run"].as_str().unwrap();
    assert!(
        install.contains("cargo +stable install --locked")
            && install.contains(r#"--git "$FLOW_POLICY_REPO" "${rev[@]}" flow-policy"#),
        "{install}"
    );
    assert!(
        steps[4]["run"]
            .as_str()
            .unwrap()
            .ends_with("echo \"status=$status\" >> \"$GITHUB_OUTPUT\"\n")
    );
    for step in &steps[5..] {
        let condition = step["if"].as_str().unwrap();
        assert!(
            condition.starts_with("always() && steps.diff.outputs.status != ''"),
            "{condition}"
        );
    }
    assert!(
        steps[5]["with"]["script"]
            .as_str()
            .unwrap()
            .contains("<!-- flow-policy-diff -->")
    );
    assert_eq!(steps[6]["with"]["path"], "junit.xml\nsummary.md\n");
    assert!(
        steps[7]["run"]
            .as_str()
            .unwrap()
            .contains("exit \"$STATUS\"")
    );
    // Every action is pinned to a full commit, its version in a comment.
    let mut actions = 0;
    for line in text.lines().filter(|line| line.trim().starts_with("uses:")) {
        let (reference, comment) = line.split_once(" # v").unwrap();
        let (_, commit) = reference.split_once('@').unwrap();
        assert_eq!(commit.len(), 40, "{line}");
        assert!(
            commit.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{line}"
        );
        assert!(comment.split('.').count() == 3, "{line}");
        actions += 1;
    }
    assert_eq!(actions, 4);
}

#[test]
fn the_azure_template_publishes_comments_and_then_fails() {
    let template = yaml(&read(&azure_template()));
    let names: Vec<&str> = template["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "policyDir",
            "graph",
            "inventory",
            "failOn",
            "flowPolicyRepo",
            "flowPolicyRev",
            "comment",
            "vmImage",
        ]
    );
    let steps = azure_steps(&template);
    let (publish, results) = step_named(steps, "task", "PublishTestResults@2");
    assert_eq!(results["inputs"]["testResultsFormat"], "JUnit");
    let (thread, post) = step_named(steps, "displayName", "Post or update the PR thread");
    assert_eq!(post["env"]["SYSTEM_ACCESSTOKEN"], "$(System.AccessToken)");
    assert!(
        post["bash"]
            .as_str()
            .unwrap()
            .contains("/pullRequests/${PULL_REQUEST_ID}/threads")
    );
    let (last, fail) = step_named(steps, "displayName", "Fail with the diff's exit status");
    assert_eq!(last, steps.len() - 1);
    assert!(publish < last && thread < last);
    assert!(
        fail["bash"]
            .as_str()
            .unwrap()
            .contains("exit \"$POLICY_DIFF_STATUS\"")
    );
    for step in [results, post, fail] {
        let condition = step["condition"].as_str().unwrap();
        assert!(
            condition.starts_with("and(succeededOrFailed(),"),
            "{condition}"
        );
    }
    let (_, install) = step_named(steps, "displayName", "Install flow-policy");
    let install = install["bash"].as_str().unwrap();
    assert!(
        install.contains("cargo +stable install --locked")
            && install.contains(r#"--git "$FLOW_POLICY_GIT" "${rev[@]}" flow-policy"#),
        "{install}"
    );

    // The example passes only parameters the template declares.
    let example = yaml(&read(&azure_example()));
    let jobs = example["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["template"], "policy-diff.yml");
    for name in jobs[0]["parameters"].as_object().unwrap().keys() {
        assert!(names.contains(&name.as_str()), "{name}");
    }
}
