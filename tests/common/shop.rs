//! A small shop on one lab node: pods of two tenants described by an
//! inventory as `kubectl get -o yaml` would print them, a Service ClusterIP
//! DNATed by nftables as kube-proxy does, and the traffic between them.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use flow_lab::{
    Node,
    cluster::{Controller, Inventory},
};

/// The cart Service's ClusterIP.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// Pods: 0 frontend and 1 cart (Deployments, shop-a, tenant acme), 2 db-0
/// (StatefulSet, shop-b, tenant globex), 3 api (Deployment, shop-b).
pub struct Cluster {
    pub node: Node,
    pub inventory: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.inventory);
    }
}

/// The shop, or `None` (with a message) when nft is missing.
pub fn cluster() -> Option<Cluster> {
    if flow_lab::run("nft", &["--version"]).is_err() {
        assert!(
            std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
            "nft (nftables) is missing: `cargo xtask setup` installs it"
        );
        eprintln!("skipping: nft (nftables) is not installed; `cargo xtask setup` installs it");
        return None;
    }
    let node = Node::new(4).unwrap();
    // kube-proxy's part: DNAT the ClusterIP to the cart pod's named port.
    node.dnat(CLUSTER_IP, 80, "tcp", node.pods[1].ipv4, 8080)
        .unwrap();
    let pods = &node.pods;
    let mut inventory = Inventory::new();
    inventory
        .namespace("shop-a", Some("acme"))
        .namespace("shop-b", Some("globex"))
        .workload("shop-a", "frontend", Controller::Deployment { hash: "6f7d" }, &[("app", "frontend"), ("tier", "web")], &[&pods[0]], "test-node")
        .workload("shop-a", "cart", Controller::Deployment { hash: "5c8b" }, &[("app", "cart")], &[&pods[1]], "test-node")
        .workload("shop-b", "db", Controller::StatefulSet, &[("app", "db"), ("role", "primary")], &[&pods[2]], "test-node")
        .workload("shop-b", "api", Controller::Deployment { hash: "77aa" }, &[("app", "api")], &[&pods[3]], "test-node")
        .service(
            "shop-a",
            "cart",
            CLUSTER_IP,
            ("web", 80, "TCP"),
            "http",
            8080,
            &[("cart-5c8b-p000".to_owned(), IpAddr::V4(pods[1].ipv4))],
        )
        .raw("- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: unrelated, namespace: shop-a}\n  data: {key: value}\n");
    let path = std::env::temp_dir().join(format!("{}-inventory.yaml", node.netns.name));
    std::fs::write(&path, inventory.yaml()).unwrap();
    Some(Cluster {
        node,
        inventory: path,
    })
}

/// A TCP server in a pod answering one `up`-byte request with `down` bytes.
pub fn tcp_server(
    node: &Node,
    pod: usize,
    port: u16,
    up: usize,
    down: usize,
) -> std::thread::JoinHandle<flow_lab::Result<()>> {
    let address = SocketAddr::new(IpAddr::V4(node.pods[pod].ipv4), port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = node.pods[pod].netns.spawn(move || {
        let listener = TcpListener::bind(address).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = vec![0u8; up];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(&vec![1u8; down]).unwrap();
    });
    ready_rx.recv().unwrap();
    handle
}

pub fn tcp_client(node: &Node, pod: usize, to: SocketAddr, up: usize, down: usize) -> u16 {
    node.pods[pod]
        .netns
        .run(move || {
            let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
            stream.write_all(&vec![2u8; up]).unwrap();
            let mut answer = vec![0u8; down];
            stream.read_exact(&mut answer).unwrap();
            stream.local_addr().unwrap().port()
        })
        .unwrap()
}

pub fn udp_exchange(node: &Node, from: usize, to: usize, port: u16) -> u16 {
    let address = SocketAddr::new(IpAddr::V4(node.pods[to].ipv4), port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = node.pods[to].netns.spawn(move || {
        let socket = UdpSocket::bind(address).unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 512];
        let (_, peer) = socket.recv_from(&mut buffer).unwrap();
        socket.send_to(&buffer[..20], peer).unwrap();
    });
    ready_rx.recv().unwrap();
    let client_port = node.pods[from]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            socket.send_to(&[5u8; 100], address).unwrap();
            let mut buffer = [0u8; 64];
            socket.recv_from(&mut buffer).unwrap();
            socket.local_addr().unwrap().port()
        })
        .unwrap();
    server.join().unwrap().unwrap();
    client_port
}

/// Runs the cluster's traffic; returns (frontend→cart via Service, cart→db,
/// api→db over UDP) client ports.
pub fn traffic(node: &Node) -> (u16, u16, u16) {
    let cart = tcp_server(node, 1, 8080, 300, 2_000);
    let via_service = tcp_client(
        node,
        0,
        SocketAddr::new(IpAddr::V4(CLUSTER_IP), 80),
        300,
        2_000,
    );
    cart.join().unwrap().unwrap();
    let db = tcp_server(node, 2, 5432, 100, 800);
    let cross_tenant = tcp_client(
        node,
        1,
        SocketAddr::new(IpAddr::V4(node.pods[2].ipv4), 5432),
        100,
        800,
    );
    db.join().unwrap().unwrap();
    let udp = udp_exchange(node, 3, 2, 9999);
    std::thread::sleep(Duration::from_millis(200));
    (via_service, cross_tenant, udp)
}
