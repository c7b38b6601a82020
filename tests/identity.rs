//! Identity end to end: namespace pods of two tenants, an inventory describing
//! them as `kubectl get -o yaml` would, real traffic (including through a
//! Service ClusterIP DNATed by nftables in the node, as kube-proxy does), and
//! the identities on the agent's records and aggregates.
//!
//! Needs root and nft; skipped with a message otherwise.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{net::IpAddr, time::Duration};

use common::{
    netns::Agent,
    shop::{CLUSTER_IP, cluster, traffic},
};
use flow_agent::aggregate::AggregateRecord;
use flow_model::identity::{PeerKind, Workload};
use flow_model::record::FlowRecord;

fn find(records: &[FlowRecord], predicate: impl Fn(&FlowRecord) -> bool) -> Vec<&FlowRecord> {
    records.iter().filter(|record| predicate(record)).collect()
}

fn workload(kind: &str, name: &str) -> Option<Workload> {
    Some(Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

#[test]
fn records_carry_pod_workload_tenant_and_the_service_behind_a_cluster_ip() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let agent = Agent::on(
        node,
        "200ms",
        &["--inventory", cluster.inventory.to_str().unwrap()],
    );
    agent.wait_for_log("inventory loaded", Duration::from_secs(1));
    let (via_service, cross_tenant, udp) = traffic(node);
    // And one datagram to the pod's gateway, an address of the node itself.
    node.pods[0]
        .netns
        .run(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(&[1u8; 8], ("10.1.0.1", 9)).unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let output = agent.stop();
    assert!(
        output.stderr.iter().any(|line| line.contains("objects=")
            && line.contains("skipped_kinds=1")
            && line.contains("errors=0")),
        "the ConfigMap is skipped, nothing fails: {:?}",
        output.stderr
    );
    let records = output.records;
    let (frontend, cart, db, api) = (
        node.pods[0].ipv4,
        node.pods[1].ipv4,
        node.pods[2].ipv4,
        node.pods[3].ipv4,
    );

    // frontend → cart through the ClusterIP: attributed to the backend pod and
    // its target port, with the Service the client used.
    let requests = find(&records, |r| r.source.port == via_service && !r.is_reply);
    assert!(!requests.is_empty(), "{records:#?}");
    for record in &requests {
        assert_eq!(record.source.ip, IpAddr::V4(frontend));
        assert_eq!(record.source.identity.kind, Some(PeerKind::Pod));
        assert_eq!(record.source.identity.namespace.as_deref(), Some("shop-a"));
        assert_eq!(
            record.source.identity.pod.as_deref(),
            Some("frontend-6f7d-p000")
        );
        assert_eq!(
            record.source.identity.workload,
            workload("Deployment", "frontend")
        );
        assert_eq!(record.source.identity.tenant.as_deref(), Some("acme"));
        assert_eq!(
            record.source.identity.labels,
            [
                ("app".to_owned(), "frontend".to_owned()),
                ("tier".to_owned(), "web".to_owned())
            ]
            .into()
        );
        assert_eq!(record.source.identity.node.as_deref(), Some("test-node"));
        assert_eq!(
            (record.destination.ip, record.destination.port),
            (IpAddr::V4(cart), 8080)
        );
        assert_eq!(
            record.destination.identity.pod.as_deref(),
            Some("cart-5c8b-p000")
        );
        assert_eq!(
            record.destination.identity.workload,
            workload("Deployment", "cart")
        );
        let service = record.destination.service.as_ref().unwrap();
        assert_eq!(
            (
                service.namespace.as_str(),
                service.name.as_str(),
                service.ip,
                service.port,
                service.target_port
            ),
            ("shop-a", "cart", IpAddr::V4(CLUSTER_IP), 80, Some(8080))
        );
        assert_eq!(record.cross_tenant, Some(false));
    }
    assert!(requests.iter().any(|r| r.new_connection));
    // The backend's replies pair with the translated request.
    let replies = find(&records, |r| r.destination.port == via_service);
    assert!(!replies.is_empty());
    for record in &replies {
        assert!(record.is_reply, "{record:?}");
        assert_eq!(
            record.source.identity.workload,
            workload("Deployment", "cart")
        );
        assert_eq!(
            record.destination.identity.workload,
            workload("Deployment", "frontend")
        );
    }

    // cart (acme) → db-0 (globex): crosses tenants; the StatefulSet's labels
    // without its churn labels.
    let crossing = find(&records, |r| r.source.port == cross_tenant && !r.is_reply);
    assert!(!crossing.is_empty());
    for record in &crossing {
        assert_eq!(record.destination.ip, IpAddr::V4(db));
        assert_eq!(
            record.destination.identity.workload,
            workload("StatefulSet", "db")
        );
        assert_eq!(
            record.destination.identity.tenant.as_deref(),
            Some("globex")
        );
        assert_eq!(
            record.destination.identity.labels,
            [
                ("app".to_owned(), "db".to_owned()),
                ("role".to_owned(), "primary".to_owned())
            ]
            .into()
        );
        assert_eq!(record.cross_tenant, Some(true));
        assert!(record.destination.service.is_none());
    }

    // api → db over UDP: same tenant.
    let same_tenant = find(&records, |r| {
        r.source.port == udp && r.protocol.to_string() == "UDP"
    });
    assert_eq!(same_tenant.len(), 1);
    assert_eq!(same_tenant[0].source.ip, IpAddr::V4(api));
    assert_eq!(
        same_tenant[0].source.identity.workload,
        workload("Deployment", "api")
    );
    assert_eq!(same_tenant[0].cross_tenant, Some(false));
    let answer = find(&records, |r| {
        r.destination.port == udp && r.protocol.to_string() == "UDP"
    });
    assert!(answer[0].is_reply);

    // The node's own addresses (the pods' gateways, 10.N.0.1 and fd00:N::1)
    // are the host.
    let gateway = |ip: &IpAddr| {
        let text = ip.to_string();
        text.ends_with(".0.1") || (text.starts_with("fd00:") && text.ends_with("::1"))
    };
    let to_the_node = find(&records, |r| {
        gateway(&r.source.ip) || gateway(&r.destination.ip)
    });
    assert!(
        to_the_node
            .iter()
            .any(|r| r.destination.ip.to_string() == "10.1.0.1" && r.destination.port == 9),
        "{records:#?}"
    );
    for record in to_the_node {
        let host = if gateway(&record.source.ip) {
            &record.source.identity
        } else {
            &record.destination.identity
        };
        assert_eq!(host.kind, Some(PeerKind::Host), "{record:?}");
    }
}

#[test]
fn aggregates_fold_connections_by_workload_and_target_port() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let agent = Agent::on(
        node,
        "1h",
        &[
            "--inventory",
            cluster.inventory.to_str().unwrap(),
            "--output",
            "aggregates",
        ],
    );
    traffic(node);
    let lines = agent.stop_raw();
    let aggregates: Vec<AggregateRecord> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let find = |source: &str, destination: &str| {
        aggregates
            .iter()
            .find(|a| {
                a.source.workload.as_ref().is_some_and(|w| w.name == source)
                    && a.destination
                        .workload
                        .as_ref()
                        .is_some_and(|w| w.name == destination)
            })
            .unwrap_or_else(|| panic!("no {source} -> {destination} in {aggregates:#?}"))
    };
    let service = find("frontend", "cart");
    assert_eq!(
        (service.protocol.to_string().as_str(), service.port),
        ("TCP", 8080)
    );
    assert_eq!(service.service.as_deref(), Some("shop-a/cart"));
    assert_eq!(service.connections, 1);
    assert_eq!(service.destination.namespace.as_deref(), Some("shop-a"));
    assert_eq!(service.source.tenant.as_deref(), Some("acme"));
    // Request bytes carry the 300-byte request, reply bytes the 2000-byte answer.
    assert!(
        service.bytes > 300 && service.reply_bytes > 2_000,
        "{service:?}"
    );
    assert_eq!(service.cross_tenant, Some(false));

    let crossing = find("cart", "db");
    assert_eq!(
        (crossing.port, crossing.connections, crossing.cross_tenant),
        (5432, 1, Some(true))
    );
    assert_eq!(crossing.destination.workload, workload("StatefulSet", "db"));
    let udp = find("api", "db");
    assert_eq!(
        (udp.protocol.to_string().as_str(), udp.port, udp.connections),
        ("UDP", 9999, 1)
    );
    assert_eq!(
        (udp.packets, udp.bytes, udp.reply_packets, udp.reply_bytes),
        (1, 128, 1, 48)
    );
    // Replies never create an edge of their own.
    assert!(
        aggregates
            .iter()
            .all(|a| a.source.workload.as_ref().is_none_or(|w| w.name != "db"))
    );
}

#[test]
fn inventory_changes_are_picked_up_while_running() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let agent = Agent::on(
        node,
        "200ms",
        &["--inventory", cluster.inventory.to_str().unwrap()],
    );
    // Relabel the namespace shop-b to tenant acme and wait for the reload.
    let text = std::fs::read_to_string(&cluster.inventory)
        .unwrap()
        .replace("tenant: globex", "tenant: acme");
    std::fs::write(&cluster.inventory, text).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent
        .stderr()
        .iter()
        .filter(|line| line.contains("inventory loaded"))
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {:?}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, cross_tenant, _) = traffic(node);
    let output = agent.stop();
    let crossing = find(&output.records, |r| {
        r.source.port == cross_tenant && !r.is_reply
    });
    assert!(!crossing.is_empty());
    for record in crossing {
        assert_eq!(record.destination.identity.tenant.as_deref(), Some("acme"));
        assert_eq!(record.cross_tenant, Some(false));
    }
    assert_eq!(
        output
            .stderr
            .iter()
            .filter(|line| line.contains("inventory loaded"))
            .count(),
        2,
        "loaded at start and once more after the change"
    );
}

/// A Service backend on another node. The request leaves through the node's
/// uplink (which no glob selects) and the reply comes back through it,
/// un-DNATed by conntrack before the client's veth sees it: its source is the
/// Service address. The agent rewrites that source to the backend, so the
/// reply pairs with the request instead of looking like a new connection
/// from the Service.
#[test]
fn replies_of_a_backend_on_another_node_pair_with_the_request() {
    use flow_lab::{
        Node,
        cluster::{Controller, Inventory},
    };
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

    require_root!();
    if flow_lab::run("nft", &["--version"]).is_err() {
        assert!(std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none());
        eprintln!("skipping: nft is not installed");
        return;
    }
    const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
    let here = Node::new(1).unwrap();
    let there = Node::new(2).unwrap();
    let backend = there.pods[1].ipv4;
    let uplink = format!("up{}", &here.prefix[2..]);
    flow_lab::run(
        "ip",
        &[
            "link",
            "add",
            &uplink,
            "netns",
            &here.netns.name,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            &there.netns.name,
        ],
    )
    .unwrap();
    here.netns
        .ip(&["addr", "add", "192.168.77.1/30", "dev", &uplink])
        .unwrap();
    there
        .netns
        .ip(&["addr", "add", "192.168.77.2/30", "dev", "uplink"])
        .unwrap();
    here.netns.ip(&["link", "set", &uplink, "up"]).unwrap();
    there.netns.ip(&["link", "set", "uplink", "up"]).unwrap();
    here.netns.wait_until_up(&uplink).unwrap();
    there.netns.wait_until_up("uplink").unwrap();
    here.netns
        .ip(&["route", "add", "10.2.0.0/24", "via", "192.168.77.2"])
        .unwrap();
    // The other node's own first pod has 10.1.0.0/24: the client's /32 wins.
    let client_route = format!("{}/32", here.pods[0].ipv4);
    there
        .netns
        .ip(&["route", "add", &client_route, "via", "192.168.77.1"])
        .unwrap();
    here.dnat(SERVICE, 53, "udp", backend, 5353).unwrap();
    let mut inventory = Inventory::new();
    inventory
        .namespace("apps", None)
        .workload(
            "apps",
            "client",
            Controller::Deployment { hash: "1a2b" },
            &[("app", "client")],
            &[&here.pods[0]],
            "test-node",
        )
        .workload(
            "apps",
            "dns",
            Controller::Deployment { hash: "3c4d" },
            &[("app", "dns")],
            &[&there.pods[1]],
            "node-b",
        )
        .service(
            "apps",
            "dns",
            SERVICE,
            ("dns", 53, "UDP"),
            "5353",
            5353,
            &[("dns-3c4d-p000".to_owned(), IpAddr::V4(backend))],
        );
    let path = std::env::temp_dir().join(format!("{}-inventory.yaml", here.netns.name));
    std::fs::write(&path, inventory.yaml()).unwrap();
    let agent = Agent::on(&here, "200ms", &["--inventory", path.to_str().unwrap()]);
    agent.wait_for_log("inventory loaded", Duration::from_secs(2));

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = there.pods[1].netns.spawn(move || {
        let socket = UdpSocket::bind((backend, 5353)).unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 512];
        for _ in 0..3 {
            let (_, peer) = socket.recv_from(&mut buffer).unwrap();
            socket.send_to(&buffer[..20], peer).unwrap();
        }
    });
    ready_rx.recv().unwrap();
    let client_port = here.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buffer = [0u8; 64];
            for _ in 0..3 {
                socket
                    .send_to(&[5u8; 100], SocketAddr::from((SERVICE, 53)))
                    .unwrap();
                socket.recv_from(&mut buffer).unwrap();
            }
            socket.local_addr().unwrap().port()
        })
        .unwrap();
    server.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let output = agent.stop();
    let _ = std::fs::remove_file(&path);
    let client = IpAddr::V4(here.pods[0].ipv4);
    let requests = find(&output.records, |r| {
        r.source.ip == client && r.source.port == client_port
    });
    let replies = find(&output.records, |r| {
        r.destination.ip == client && r.destination.port == client_port
    });
    let total = |records: &[&FlowRecord]| records.iter().map(|r| r.packets).sum::<u64>();
    assert_eq!(total(&requests), 3, "{:#?}", output.records);
    assert_eq!(total(&replies), 3, "{:#?}", output.records);
    for request in &requests {
        assert!(!request.is_reply);
        assert_eq!(
            (request.destination.ip, request.destination.port),
            (IpAddr::V4(backend), 5353)
        );
        assert_eq!(request.destination.service.as_ref().unwrap().name, "dns");
    }
    for reply in &replies {
        assert!(reply.is_reply, "{reply:#?}");
        assert!(!reply.new_connection);
        assert_eq!(
            (reply.source.ip, reply.source.port),
            (IpAddr::V4(backend), 5353)
        );
        assert_eq!(reply.source.identity.pod.as_deref(), Some("dns-3c4d-p000"));
        assert_eq!(
            reply.source.identity.workload,
            workload("Deployment", "dns")
        );
    }
}

/// DNS from a tenant's pod to kube-system: the platform's namespace belongs to
/// no tenant, whatever its labels, so neither the query, its answer, nor
/// their aggregate crosses tenants. With another platform list the same
/// traffic does cross: the test can tell.
#[test]
fn dns_to_kube_system_is_not_cross_tenant() {
    require_root!();
    let node = flow_lab::Node::new(2).unwrap();
    let mut inventory = flow_lab::cluster::Inventory::new();
    inventory
        .namespace("shop-a", Some("acme"))
        .namespace("kube-system", Some("platform-team"))
        .workload(
            "shop-a",
            "frontend",
            flow_lab::cluster::Controller::Deployment { hash: "6f7d" },
            &[("app", "frontend")],
            &[&node.pods[0]],
            "test-node",
        )
        .workload(
            "kube-system",
            "coredns",
            flow_lab::cluster::Controller::Deployment { hash: "7db6" },
            &[("k8s-app", "kube-dns")],
            &[&node.pods[1]],
            "test-node",
        );
    let path = std::env::temp_dir().join(format!("{}-dns-inventory.yaml", node.netns.name));
    std::fs::write(&path, inventory.yaml()).unwrap();
    let crossing = |platform: &[&str]| {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut args = vec![
            "--inventory",
            path.to_str().unwrap(),
            "--output",
            "aggregates",
            "--output-file",
            file.path().to_str().unwrap(),
        ];
        for namespace in platform {
            args.extend(["--platform-namespace", namespace]);
        }
        let agent = Agent::on(&node, "1h", &args);
        agent.wait_for_log("inventory loaded", Duration::from_secs(1));
        let client_port = common::shop::udp_exchange(&node, 0, 1, 53);
        let aggregates: Vec<AggregateRecord> = agent
            .stop_raw()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let records: Vec<FlowRecord> = std::fs::read_to_string(file.path())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let query = find(&records, |r| r.source.port == client_port && !r.is_reply);
        let answer = find(&records, |r| {
            r.destination.port == client_port && r.is_reply
        });
        assert_eq!((query.len(), answer.len()), (1, 1), "{records:#?}");
        assert_eq!(
            answer[0].source.identity.tenant.as_deref(),
            Some("platform-team"),
            "the platform pod keeps its namespace's tenant for access and filters"
        );
        let dns: Vec<&AggregateRecord> = aggregates
            .iter()
            .filter(|a| a.port == 53 && a.destination.namespace.as_deref() == Some("kube-system"))
            .collect();
        assert_eq!(dns.len(), 1, "{aggregates:#?}");
        (
            query[0].cross_tenant,
            answer[0].cross_tenant,
            dns[0].cross_tenant,
        )
    };
    assert_eq!(crossing(&[]), (Some(false), Some(false), Some(false)));
    assert_eq!(
        crossing(&["kube-public"]),
        (Some(true), Some(true), Some(true))
    );
    let _ = std::fs::remove_file(&path);
}
