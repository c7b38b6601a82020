//! The deployment manifests: rendered as Kustomize renders them (the subset
//! they use: resources, namespace, JSON 6902 patches; compared with `kubectl
//! kustomize` where kubectl is installed), validated against the Kubernetes
//! 1.33 schema (kubernetes-validate, strict), and checked for what matters:
//! least privilege, probes on the health endpoints, and an agent
//! configuration that the agent itself accepts.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::path::{Path, PathBuf};

use flow_agent::{
    api::access::AccessPolicy,
    config::{RunConfig, RunOptions},
};
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_documents(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|document| <Value as serde::Deserialize>::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

/// Applies one JSON 6902 operation (`add`, `replace`, `remove`).
fn apply_operation(object: &mut Value, operation: &Value) {
    let path = operation["path"].as_str().unwrap();
    let tokens: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens.split_last().unwrap();
    let mut parent = &mut *object;
    for token in parents {
        parent = match parent {
            Value::Array(items) => &mut items[token.parse::<usize>().unwrap()],
            other => other
                .get_mut(token)
                .unwrap_or_else(|| panic!("no {token} in {path}")),
        };
    }
    let value = operation.get("value").cloned();
    match (operation["op"].as_str().unwrap(), parent) {
        ("add" | "replace", Value::Object(map)) => {
            map.insert(last.clone(), value.unwrap());
        }
        ("add", Value::Array(items)) if last == "-" => items.push(value.unwrap()),
        ("add", Value::Array(items)) => items.insert(last.parse().unwrap(), value.unwrap()),
        ("replace", Value::Array(items)) => items[last.parse::<usize>().unwrap()] = value.unwrap(),
        ("remove", Value::Object(map)) => {
            map.remove(last);
        }
        ("remove", Value::Array(items)) => {
            items.remove(last.parse().unwrap());
        }
        (op, _) => panic!("unsupported {op} at {path}"),
    }
}

const CLUSTER_SCOPED: [&str; 3] = ["Namespace", "ClusterRole", "ClusterRoleBinding"];

/// Renders a kustomization directory.
fn render(directory: &Path) -> Vec<Value> {
    let kustomization =
        &yaml_documents(&std::fs::read_to_string(directory.join("kustomization.yaml")).unwrap())[0];
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = directory.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(render(&path));
        } else {
            objects.extend(yaml_documents(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for object in &mut objects {
            if !CLUSTER_SCOPED.contains(&object["kind"].as_str().unwrap()) {
                object["metadata"]["namespace"] = Value::from(namespace);
            }
        }
    }
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        let target = &patch["target"];
        let operations = &yaml_documents(patch["patch"].as_str().unwrap())[0];
        let object = objects
            .iter_mut()
            .find(|object| {
                object["kind"] == target["kind"] && object["metadata"]["name"] == target["name"]
            })
            .unwrap_or_else(|| panic!("no target {target}"));
        for operation in operations.as_array().unwrap() {
            apply_operation(object, operation);
        }
    }
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// Valid against the Kubernetes schema, unknown fields refused.
fn validate_schema(objects: &[Value]) {
    let Some(python) = common::cli::python() else {
        return;
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let text: Vec<String> = objects
        .iter()
        .map(|object| yaml_serde::to_string(object).unwrap())
        .collect();
    std::fs::write(file.path(), text.join("---\n")).unwrap();
    let output = std::process::Command::new(python.with_file_name("kubernetes-validate"))
        .args(["--strict", "-k", "1.33.0"])
        .arg(file.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        objects.len(),
        "{report}"
    );
}

fn check(directory: &Path, interfaces: &[&str]) {
    let objects = render(directory);
    // Where kubectl is installed, its Kustomize renders the same objects.
    if let Ok(output) = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(directory)
        .output()
    {
        assert!(
            output.status.success(),
            "kubectl kustomize {} refused it: {}",
            directory.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut theirs = yaml_documents(&String::from_utf8(output.stdout).unwrap());
        let mut ours = objects.clone();
        let key = |object: &Value| format!("{}/{}", object["kind"], object["metadata"]["name"]);
        theirs.sort_by_key(key);
        ours.sort_by_key(key);
        assert_eq!(ours, theirs, "{}", directory.display());
    }
    let kinds: Vec<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service"
        ]
    );

    validate_schema(&objects);

    // Read-only RBAC.
    for rule in find(&objects, "ClusterRole")["rules"].as_array().unwrap() {
        assert_eq!(
            rule["verbs"],
            serde_json::json!(["get", "list", "watch"]),
            "{rule}"
        );
    }
    // Least privilege: root with three capabilities, not privileged.
    let pod = &find(&objects, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]})
    );
    assert_eq!(
        container["env"][0],
        serde_json::json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        serde_json::json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/readyz", "port": "metrics"})
    );
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );
    let bpffs = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| mount["mountPath"] == "/sys/fs/bpf")
        .unwrap();
    assert_eq!(bpffs["mountPropagation"], "HostToContainer");

    // The configuration the agent will read: valid for this very agent, with
    // the ports the probes and the Service use.
    let data = &find(&objects, "ConfigMap")["data"];
    let options = RunOptions::parse(
        data["flow-agent.yaml"].as_str().unwrap(),
        Path::new("flow-agent.yaml"),
    )
    .unwrap();
    let config = RunConfig::resolve(options).unwrap();
    let effective = config.effective();
    assert_eq!(effective.interfaces.as_deref().unwrap(), interfaces);
    assert_eq!(effective.metrics_listen.unwrap().port(), 9090);
    assert_eq!(effective.grpc_listen.unwrap().port(), 4245);
    assert_eq!(effective.kubernetes, Some(true));
    assert_eq!(
        effective.pin_dir.as_deref(),
        Some(Path::new("/sys/fs/bpf/flow-agent"))
    );
    let (api, _) = config.api.unwrap();
    assert!(
        api.tls.is_some() && api.client_ca.is_some(),
        "the API off loopback is mTLS"
    );
    AccessPolicy::parse(data["access.yaml"].as_str().unwrap(), "access.yaml").unwrap();
    let ports: Vec<u64> = find(&objects, "Service")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [4245, 9090]);
}

#[test]
fn the_base_is_valid_and_least_privileged() {
    check(&deploy().join("base"), &["veth*"]);
}

#[test]
fn the_cleanup_daemonset_is_valid_and_runs_flow_agent_cleanup() {
    let objects = render(&deploy().join("cleanup"));
    let kinds: Vec<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet"]);
    let pod = &find(&objects, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["args"],
        serde_json::json!(["cleanup", "--pin-dir", "/sys/fs/bpf/flow-agent"])
    );
    validate_schema(&objects);
}

#[test]
fn the_aks_overlay_watches_azure_cilium_and_calico_interfaces() {
    check(&deploy().join("overlays/aks"), &["azv*", "lxc*", "cali*"]);
}
