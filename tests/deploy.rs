//! The deployment manifests: rendered as Kustomize renders them (the subset
//! they use: resources, namespace, JSON 6902 patches; compared with `kubectl
//! kustomize` where kubectl is installed), validated against the Kubernetes
//! 1.33 schema (kubernetes-validate, strict), and checked for what matters:
//! least privilege, probes on the health endpoints, and an agent
//! configuration that the agent itself accepts. The Hubble overlay adds
//! hubble-relay and Hubble UI: checked for being wired to the agents' Hubble
//! port, TLS files and names, and for running unprivileged from pinned images.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::path::{Path, PathBuf};

use flow_agent::{
    api::{access::AccessPolicy, hubble::peer::server_name, server::Authz},
    config::{RunConfig, RunOptions},
};
use serde_json::{Value, json};

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

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds_and_names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|object| {
            format!(
                "{}/{}",
                object["kind"].as_str().unwrap(),
                object["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
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

/// The agent's objects, as the base lists them.
const AGENT_OBJECTS: [&str; 7] = [
    "Namespace/flow-agent",
    "ServiceAccount/flow-agent",
    "ClusterRole/flow-agent",
    "ClusterRoleBinding/flow-agent",
    "ConfigMap/flow-agent-config",
    "DaemonSet/flow-agent",
    "Service/flow-agent",
];

/// Renders `directory` and checks the agent's part of it: the agent's objects
/// and then `others` (`Kind/name`), valid, least privileged, and a
/// configuration the agent accepts, which is returned with the objects.
fn check(directory: &Path, interfaces: &[&str], others: &[&str]) -> (Vec<Value>, RunConfig) {
    let objects = render_as_kubectl(directory);
    assert_eq!(
        kinds_and_names(&objects),
        [&AGENT_OBJECTS[..], others].concat()
    );
    check_agent(objects, interfaces)
}

/// Renders a kustomization directory, the same as kubectl's Kustomize where
/// kubectl is installed.
fn render_as_kubectl(directory: &Path) -> Vec<Value> {
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
    objects
}

/// The agent's part of rendered `objects`: see [`check`].
fn check_agent(objects: Vec<Value>, interfaces: &[&str]) -> (Vec<Value>, RunConfig) {
    validate_schema(&objects);

    // Read-only RBAC, but for the reviews --grpc-authz kubernetes asks for.
    for role in objects
        .iter()
        .filter(|object| object["kind"] == "ClusterRole")
        .filter(|object| object["metadata"]["name"] != "flow-agent-authz")
    {
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        }
    }
    // Least privilege: root with three capabilities, not privileged.
    let pod = &find(&objects, "DaemonSet", "flow-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["capabilities"],
        json!({"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]})
    );
    assert_eq!(
        container["env"][0],
        json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
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
    let data = &find(&objects, "ConfigMap", "flow-agent-config")["data"];
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
    let (api, _) = config.api.as_ref().unwrap();
    assert!(
        api.tls.is_some() && api.client_ca.is_some(),
        "the API off loopback is mTLS"
    );
    AccessPolicy::parse(data["access.yaml"].as_str().unwrap(), "access.yaml").unwrap();
    let ports: Vec<u64> = find(&objects, "Service", "flow-agent")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [4245, 9090]);
    (objects, config)
}

#[test]
fn the_base_is_valid_and_least_privileged() {
    check(&deploy().join("base"), &["veth*"], &[]);
}

#[test]
fn the_cleanup_daemonset_is_valid_and_runs_flow_agent_cleanup() {
    let objects = render(&deploy().join("cleanup"));
    let kinds: Vec<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet"]);
    let pod = &find(&objects, "DaemonSet", "flow-agent-cleanup")["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["args"],
        json!(["cleanup", "--pin-dir", "/sys/fs/bpf/flow-agent"])
    );
    validate_schema(&objects);
}

#[test]
fn the_aks_overlay_watches_azure_cilium_and_calico_interfaces() {
    check(
        &deploy().join("overlays/aks"),
        &["azv*", "lxc*", "cali*"],
        &[],
    );
}

#[test]
fn the_rbac_overlay_asks_the_cluster_and_grants_nothing_else() {
    let (objects, config) = check(
        &deploy().join("overlays/rbac"),
        &["azv*", "lxc*", "cali*"],
        &[
            "ClusterRole/flow-agent-authz",
            "ClusterRoleBinding/flow-agent-authz",
            "ClusterRole/flow-agent-flows-reader",
        ],
    );
    let (api, _) = config.api.as_ref().unwrap();
    assert_eq!(
        (api.authz, api.access.as_ref()),
        (
            Authz::Kubernetes {
                cache_ttl: std::time::Duration::from_secs(30)
            },
            None
        )
    );
    // Creating reviews, nothing more; bound to the agent's account only.
    assert_eq!(
        find(&objects, "ClusterRole", "flow-agent-authz")["rules"],
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ])
    );
    assert_eq!(
        find(&objects, "ClusterRoleBinding", "flow-agent-authz")["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flow-agent", "namespace": "flow-agent"}])
    );
    // The role tenants are bound to names the resource the agent asks about.
    assert_eq!(
        find(&objects, "ClusterRole", "flow-agent-flows-reader")["rules"],
        json!([{
            "apiGroups": [flow_agent::api::rbac::GROUP],
            "resources": [flow_agent::api::rbac::RESOURCE],
            "verbs": ["get", "list", "watch"],
        }])
    );
    // The example bindings are valid and bind that role.
    let examples = yaml_documents(
        &std::fs::read_to_string(deploy().join("examples/tenant-access.yaml")).unwrap(),
    );
    validate_schema(&examples);
    assert_eq!(
        kinds_and_names(&examples),
        [
            "RoleBinding/flows-acme",
            "RoleBinding/flows-globex",
            "ClusterRoleBinding/flows-platform"
        ]
    );
    for binding in &examples {
        assert_eq!(binding["roleRef"]["name"], "flow-agent-flows-reader");
    }
}

/// The relay's client certificate name: admin in the agents' access.yaml and
/// the CN of deploy/README.md's recipe.
const RELAY_CLIENT_NAME: &str = "hubble-relay";
/// The DNS name the agents' server certificate carries for Hubble.
const HUBBLE_SERVER_SAN: &str = "*.default.hubble-grpc.cilium.io";
/// The operator builds the agent's image (deploy/README.md, Install): the
/// only one not pinned by digest.
const AGENT_IMAGE: &str = "ghcr.io/flow-agent/flow-agent:";

/// A certificate's DNS name covers `name`: `*` stands for one whole label,
/// the left-most (RFC 6125), as Go's and rustls's verifiers read it.
fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

fn pod_spec<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &find(objects, kind, name)["spec"]["template"]["spec"]
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|container| container["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container port a Service's `targetPort` or a probe's `port` reaches:
/// a number as is, a name through the container's ports.
fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|declared| declared["name"] == *name)
            .unwrap_or_else(|| panic!("no port {name} in {}", container["name"]))["containerPort"]
            .as_u64()
            .unwrap(),
        number => number.as_u64().unwrap(),
    }
}

/// The port of a listen address such as `:4245` or `0.0.0.0:4245`.
fn listen_port(address: &Value) -> u64 {
    address
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// The volume a file at `path` of `container` comes from, and its key there:
/// the file mounted by itself (`subPath`) or its directory (through `items`,
/// or every key by its name). Such mounts are read-only.
fn mounted_file<'a>(pod: &'a Value, container: &Value, path: &str) -> (&'a Value, String) {
    let (mount, within) = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|mount| {
            let at = mount["mountPath"].as_str().unwrap();
            if at == path {
                return Some((mount, mount["subPath"].as_str()?.to_owned()));
            }
            let within = path.strip_prefix(at)?.strip_prefix('/')?;
            Some((mount, within.to_owned()))
        })
        .unwrap_or_else(|| panic!("{path} is not mounted in {}", container["name"]));
    assert_eq!(mount["readOnly"], true, "{mount}");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .unwrap();
    let source = ["secret", "configMap"]
        .iter()
        .map(|kind| &volume[kind])
        .find(|source| !source.is_null())
        .unwrap_or_else(|| panic!("{volume} is neither a secret nor a ConfigMap"));
    let key = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|item| item["path"] == within.as_str())
            .unwrap_or_else(|| panic!("no item {within} in {volume}"))["key"]
            .as_str()
            .unwrap()
            .to_owned(),
        None => within,
    };
    (volume, key)
}

/// Restricted Pod Security: not root, nothing to escalate to, no capability,
/// the runtime's seccomp profile, read-only image, sized, probed.
fn assert_unprivileged(name: &str, pod: &Value) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{name}"
    );
    for container in pod["containers"].as_array().unwrap() {
        let security = &container["securityContext"];
        let user = security
            .get("runAsUser")
            .unwrap_or(&pod["securityContext"]["runAsUser"]);
        assert!(user.as_u64().unwrap() > 0, "{name}: {container}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}), "{name}");
        let resources = &container["resources"];
        assert!(
            resources["requests"]["cpu"].is_string()
                && resources["requests"]["memory"].is_string()
                && resources["limits"]["memory"].is_string(),
            "{name}: {resources}"
        );
        assert!(
            container["readinessProbe"].is_object() && container["livenessProbe"].is_object(),
            "{name}: {container}"
        );
    }
}

#[test]
fn the_hubble_overlay_serves_relay_and_ui_from_the_agents_hubble_port() {
    let (objects, config) = check(
        &deploy().join("overlays/hubble"),
        &["veth*"],
        &[
            "Service/hubble-peer",
            "ConfigMap/hubble-relay-config",
            "Deployment/hubble-relay",
            "Service/hubble-relay",
            "NetworkPolicy/hubble-relay",
            "ServiceAccount/hubble-ui",
            "ClusterRole/hubble-ui",
            "ClusterRoleBinding/hubble-ui",
            "ConfigMap/hubble-ui-nginx",
            "Deployment/hubble-ui",
            "Service/hubble-ui",
        ],
    );

    // The agents: Hubble on 4244, declared as their `hubble` port, under
    // names the documented wildcard covers, the relay an admin.
    let hubble_listen = "0.0.0.0:4244".parse().unwrap();
    assert_eq!(config.effective().hubble_listen, Some(hubble_listen));
    let (api, _) = config.api.as_ref().unwrap();
    let hubble = api.hubble.as_ref().unwrap();
    assert_eq!(hubble.listen, hubble_listen);
    for node in [
        "aks-nodepool1-12345678-vmss000000",
        "ip-10-0-1-2.ec2.internal",
    ] {
        let name = server_name(&hubble.tls_server_name, node);
        assert!(covers(HUBBLE_SERVER_SAN, &name), "{name}");
    }
    let agents = pod_spec(&objects, "DaemonSet", "flow-agent");
    let agent = container(agents, "flow-agent");
    assert_eq!(container_port(agent, &json!("hubble")), 4244);
    let access = &find(&objects, "ConfigMap", "flow-agent-config")["data"]["access.yaml"];
    let access = &yaml_documents(access.as_str().unwrap())[0];
    assert!(
        access["clients"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": RELAY_CLIENT_NAME, "admin": true})),
        "{access}"
    );

    // The Peer service: every agent's Hubble port, on the caller's node.
    let peer = &find(&objects, "Service", "hubble-peer");
    let namespace = peer["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(namespace, "flow-agent");
    assert_eq!(peer["spec"]["internalTrafficPolicy"], "Local");
    let agent_labels =
        &find(&objects, "DaemonSet", "flow-agent")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&peer["spec"]["selector"], agent_labels);
    let [peer_port] = peer["spec"]["ports"].as_array().unwrap().as_slice() else {
        panic!("one port: {peer}");
    };
    assert_eq!(peer_port["port"], 443);
    assert_eq!(container_port(agent, &peer_port["targetPort"]), 4244);

    // The relay's configuration names that Service, and the TLS names it
    // then expects are the agents' certificate's.
    let relay_config = &find(&objects, "ConfigMap", "hubble-relay-config")["data"]["config.yaml"];
    let relay_config = &yaml_documents(relay_config.as_str().unwrap())[0];
    assert_eq!(
        relay_config["peer-service"],
        format!("hubble-peer.{namespace}.svc.cluster.local.:443")
    );
    let cluster = relay_config["cluster-name"].as_str().unwrap();
    assert!(covers(
        HUBBLE_SERVER_SAN,
        &format!("hubble-peer.{cluster}.hubble-grpc.cilium.io")
    ));
    assert_eq!(relay_config["disable-server-tls"], true);

    // The relay: its configuration and TLS files mounted where it reads
    // them, its ports and probes those of the configuration.
    let relay_pod = pod_spec(&objects, "Deployment", "hubble-relay");
    let relay = container(relay_pod, "hubble-relay");
    assert_eq!(relay["command"], json!(["hubble-relay"]));
    assert_eq!(relay["args"], json!(["serve"]));
    let (volume, key) = mounted_file(relay_pod, relay, "/etc/hubble-relay/config.yaml");
    assert_eq!(
        (&volume["configMap"]["name"], key.as_str()),
        (&json!("hubble-relay-config"), "config.yaml")
    );
    for (setting, secret_key) in [
        ("tls-hubble-client-cert-file", "tls.crt"),
        ("tls-hubble-client-key-file", "tls.key"),
        ("tls-hubble-server-ca-files", "ca.crt"),
    ] {
        let path = relay_config[setting].as_str().unwrap();
        let (volume, key) = mounted_file(relay_pod, relay, path);
        assert_eq!(
            (&volume["secret"]["secretName"], key.as_str()),
            (&json!("hubble-relay-client-certs"), secret_key),
            "{setting}: {path}"
        );
    }
    let relay_grpc = listen_port(&relay_config["listen-address"]);
    let relay_health = listen_port(&relay_config["health-listen-address"]);
    assert_eq!(container_port(relay, &json!("grpc")), relay_grpc);
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(
            container_port(relay, &relay[probe]["grpc"]["port"]),
            relay_health,
            "{probe}"
        );
    }
    assert_eq!(relay_pod["automountServiceAccountToken"], false);
    let relay_service = find(&objects, "Service", "hubble-relay");
    let relay_port = &relay_service["spec"]["ports"][0];
    assert_eq!(relay_port["port"], 80);
    assert_eq!(container_port(relay, &relay_port["targetPort"]), relay_grpc);

    // The UI: nginx on the Service's port, passing /api to the backend,
    // which reads flows from the relay's Service.
    let ui_pod = pod_spec(&objects, "Deployment", "hubble-ui");
    let frontend = container(ui_pod, "frontend");
    let backend = container(ui_pod, "backend");
    let env = |name: &str| {
        backend["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|variable| variable["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        env("FLOWS_API_ADDR"),
        format!(
            "{}:{}",
            relay_service["metadata"]["name"].as_str().unwrap(),
            relay_port["port"]
        )
    );
    let backend_port = env("EVENTS_SERVER_PORT");
    assert_eq!(
        container_port(backend, &json!("api")).to_string(),
        backend_port
    );
    let (volume, key) = mounted_file(ui_pod, frontend, "/etc/nginx/conf.d/default.conf");
    let nginx = &find(
        &objects,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    )["data"][&key];
    let nginx = nginx.as_str().unwrap();
    assert!(
        nginx.contains(&format!("proxy_pass http://127.0.0.1:{backend_port};")),
        "{nginx}"
    );
    let frontend_port = container_port(frontend, &json!("http"));
    assert!(
        nginx.contains(&format!("listen {frontend_port};")),
        "{nginx}"
    );
    let ui_port = &find(&objects, "Service", "hubble-ui")["spec"]["ports"][0];
    assert_eq!(ui_port["port"], 80);
    assert_eq!(
        container_port(frontend, &ui_port["targetPort"]),
        frontend_port
    );

    // The UI's account reads namespaces and nothing else, and only the
    // backend holds its token.
    assert_eq!(
        find(&objects, "ClusterRole", "hubble-ui")["rules"],
        json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}])
    );
    let binding = find(&objects, "ClusterRoleBinding", "hubble-ui");
    assert_eq!(binding["roleRef"]["name"], "hubble-ui");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "hubble-ui", "namespace": namespace}])
    );
    assert_eq!(ui_pod["serviceAccountName"], "hubble-ui");
    assert_eq!(ui_pod["automountServiceAccountToken"], false);
    let token_mounts = |container: &Value| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|mount| mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
            .count()
    };
    assert_eq!((token_mounts(frontend), token_mounts(backend)), (0, 1));

    // Unprivileged relay and UI; third-party images pinned by tag and digest.
    assert_unprivileged("hubble-relay", relay_pod);
    assert_unprivileged("hubble-ui", ui_pod);
    for workload in objects
        .iter()
        .filter(|object| object["kind"] == "Deployment" || object["kind"] == "DaemonSet")
    {
        let pod = &workload["spec"]["template"]["spec"];
        for container in ["initContainers", "containers"]
            .iter()
            .flat_map(|list| pod[list].as_array().into_iter().flatten())
        {
            let image = container["image"].as_str().unwrap();
            if image.starts_with(AGENT_IMAGE) {
                continue;
            }
            let (reference, digest) = image
                .split_once("@sha256:")
                .unwrap_or_else(|| panic!("{image} is not pinned by digest"));
            assert!(
                digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
                "{image}"
            );
            assert!(
                reference.rsplit('/').next().unwrap().contains(':'),
                "{image} has no tag"
            );
        }
    }

    // deploy/README.md's recipe makes the certificates these names expect.
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
    assert!(readme.contains(&format!("/CN={RELAY_CLIENT_NAME}\"")));
    assert!(readme.contains(&format!("DNS:{HUBBLE_SERVER_SAN}")));
}

/// `deploy/monitoring`: a ServiceMonitor of the agents' Service and the
/// alert rules as a PrometheusRule. Their CRDs are not in the Kubernetes
/// schema, so their structure is checked here; promtool judges the rules
/// (tests/monitoring_rules.rs).
#[test]
fn the_monitoring_scrapes_the_agents_service_and_carries_the_rules_file() {
    let objects = render_as_kubectl(&deploy().join("monitoring"));
    assert_eq!(
        kinds_and_names(&objects),
        ["ServiceMonitor/flow-agent", "PrometheusRule/flow-agent"]
    );
    for object in &objects {
        assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(object["metadata"]["namespace"], "flow-agent");
    }
    let base = render(&deploy().join("base"));
    let service = find(&base, "Service", "flow-agent");
    let keys = |value: &Value| -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };

    // The agents' Service, by its labels, in its namespace, on its named
    // metrics port, keeping the violations' own `namespace` label. The job
    // is the Service's name, which the rules' `up{job=...}` names.
    let monitor = &find(&objects, "ServiceMonitor", "flow-agent")["spec"];
    assert_eq!(
        keys(monitor),
        ["endpoints", "namespaceSelector", "selector"]
    );
    assert_eq!(
        monitor["selector"],
        json!({"matchLabels": service["metadata"]["labels"]})
    );
    assert_eq!(
        monitor["namespaceSelector"],
        json!({"matchNames": [service["metadata"]["namespace"]]})
    );
    let [endpoint] = monitor["endpoints"].as_array().unwrap().as_slice() else {
        panic!("one endpoint: {monitor}");
    };
    assert_eq!(keys(endpoint), ["honorLabels", "interval", "path", "port"]);
    assert_eq!(
        (&endpoint["path"], &endpoint["honorLabels"]),
        (&json!("/metrics"), &json!(true))
    );
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|port| port["name"] == endpoint["port"] && port["port"] == 9090),
        "{service}"
    );
    let rules_text =
        std::fs::read_to_string(deploy().join("monitoring/prometheus/flow-agent.rules.yml"))
            .unwrap();
    assert!(rules_text.contains(&format!(
        "up{{job=\"{}\"}}",
        service["metadata"]["name"].as_str().unwrap()
    )));

    // The PrometheusRule carries the rules file's groups, whose runbooks
    // are deploy/README.md's sections on the project's repository.
    let rule = find(&objects, "PrometheusRule", "flow-agent");
    let rules = &yaml_documents(&rules_text)[0];
    assert_eq!(rule["spec"], *rules);
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
    let alerts: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(alerts.len(), 9);
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!(
                "{}/blob/main/deploy/README.md#{}",
                env!("CARGO_PKG_REPOSITORY"),
                name.to_lowercase()
            )
        );
        assert!(readme.contains(&format!("\n### {name}\n")), "{name}");
        assert!(
            ["critical", "warning", "info"]
                .contains(&alert["labels"]["severity"].as_str().unwrap()),
            "{alert}"
        );
    }
}
