//! The flow API's costs: publishing into the hub with 0, 1 and 4 following
//! subscribers (one of them tenant-scoped and filtered), the memory of the
//! replay buffer, gRPC streaming to one client (replay and follow), and the
//! rotating file sink. Prints figures; asserts nothing.
//!
//! `cargo bench -p flow-agent --bench api` (no root needed; listens on
//! 127.0.0.1:47110).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use flow_agent::{
    api::{
        filter::{FlowMatcher, Scope},
        hub::{Hub, HubSettings, Replay},
        server::{self, ApiSettings, Served},
    },
    identity::{Identity, PeerKind, Workload},
    output::{FileSink, FileSinkSettings, RecordSink as _},
    record::{Endpoint, FlowRecord, Hook, Protocol, Timestamp},
};
use flow_proto::v1::{
    EndpointFilter, FlowFilter, GetFlowsRequest, flow_service_client::FlowServiceClient,
    get_flows_response,
};
use prost::Message as _;

const RECORDS: usize = 100_000;
const ADDRESS: &str = "127.0.0.1:47110";

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

/// Pods on and around the node: records of one pod share its identity, as
/// the agent's enricher makes them.
const PODS: usize = 1_000;

fn pod(index: usize) -> Arc<Identity> {
    let tenant = format!("tenant-{}", index % 20);
    let app = format!("app-{}", index % 50);
    Arc::new(Identity {
        kind: Some(PeerKind::Pod),
        namespace: Some(tenant.clone()),
        pod: Some(format!("{app}-5d8f9c-{index:05}")),
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: app.clone(),
        }),
        tenant: Some(tenant),
        labels: BTreeMap::from([
            ("app".to_owned(), app),
            ("version".to_owned(), "v1".to_owned()),
        ]),
        node: Some("node-a".into()),
        note: None,
    })
}

fn endpoint(pods: &[Arc<Identity>], index: usize, port: u16) -> Endpoint {
    let pod = index % PODS;
    Endpoint {
        ip: IpAddr::from([10, 1, (pod / 250) as u8, (pod % 250) as u8]),
        port,
        identity: Arc::clone(&pods[pod]),
        service: None,
    }
}

fn records() -> Vec<FlowRecord> {
    let pods: Vec<Arc<Identity>> = (0..PODS).map(pod).collect();
    let time = Timestamp(SystemTime::now());
    (0..RECORDS)
        .map(|index| FlowRecord {
            time,
            first_seen: time,
            source: endpoint(&pods, index, 40_000 + (index % 20_000) as u16),
            destination: endpoint(&pods, index * 7 + 3, 8080),
            protocol: Protocol(6),
            icmp: None,
            packets: 10,
            bytes: 4_000,
            tcp_flags: vec!["SYN".into(), "ACK".into()],
            is_reply: false,
            interface: "azv1234abcd".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "node-a".into(),
            cross_tenant: Some(index % 3 == 0),
            new_connection: true,
            violation: false,
        })
        .collect()
}

fn settings() -> HubSettings {
    HubSettings {
        buffer: RECORDS,
        aggregate_buffer: 100,
        subscriber_queue: 2 * RECORDS,
        max_subscribers: 10_000,
    }
}

fn publish(records: &[FlowRecord], followers: usize) {
    let hub = Hub::new("node-a".into(), settings());
    let mut feeds = Vec::new();
    for index in 0..followers {
        let subscription = if index == 0 {
            hub.subscribe_flows(Replay::last(0), true, "bench", |_| true)
        } else {
            // A tenant, asking for its TCP flows to port 8080.
            let scope = Scope::Tenant(format!("tenant-{index}"));
            let matcher = FlowMatcher::compile(
                &[FlowFilter {
                    destination: Some(EndpointFilter {
                        port: vec![8080],
                        ..EndpointFilter::default()
                    }),
                    protocol: vec!["TCP".into()],
                    ..FlowFilter::default()
                }],
                &[],
            )
            .unwrap_or_default();
            hub.subscribe_flows(Replay::last(0), true, "bench", move |stored| {
                scope.allows(&stored.record) && matcher.matches(&stored.record)
            })
        };
        // The settings allow more followers than the benchmark makes.
        let Ok(subscription) = subscription else {
            return;
        };
        feeds.push(subscription.live);
    }
    let rss = resident_kib();
    let began = Instant::now();
    for batch in records.chunks(10_000) {
        hub.publish_flows(batch);
    }
    let elapsed = began.elapsed();
    println!(
        "hub publish, {followers} followers: {:.0} ns/record ({RECORDS} records in batches of 10000); resident +{} KiB ({:.0} bytes/record buffered and queued)",
        elapsed.as_nanos() as f64 / RECORDS as f64,
        resident_kib().saturating_sub(rss),
        resident_kib().saturating_sub(rss) as f64 * 1024.0 / RECORDS as f64
    );
    drop(feeds);
}

async fn stream(follow: bool, hub: &Arc<Hub>, records: &[FlowRecord]) -> (usize, usize, Duration) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ADDRESS}"))
        .unwrap_or_else(|error| panic!("{error}"))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect: {error}"));
    let mut client = FlowServiceClient::new(channel).max_decoding_message_size(16 << 20);
    let request = GetFlowsRequest {
        number: if follow { 0 } else { RECORDS as i64 },
        follow,
        ..GetFlowsRequest::default()
    };
    let mut responses = client
        .get_flows(request)
        .await
        .unwrap_or_else(|status| panic!("{status}"))
        .into_inner();
    let began = Instant::now();
    if follow {
        let hub = Arc::clone(hub);
        let records = records.to_vec();
        tokio::task::spawn_blocking(move || {
            for batch in records.chunks(10_000) {
                hub.publish_flows(batch);
            }
        });
    }
    let (mut received, mut bytes, mut lost) = (0, 0, 0);
    while received + lost < RECORDS {
        let Ok(Some(message)) = responses.message().await else {
            break;
        };
        bytes += message.encoded_len();
        match message.response {
            Some(get_flows_response::Response::Flow(_)) => received += 1,
            Some(get_flows_response::Response::LostRecords(records)) => {
                lost += records.count as usize
            }
            None => {}
        }
    }
    assert_eq!(lost, 0, "the bench's queue holds everything");
    (received, bytes, began.elapsed())
}

fn grpc(records: &[FlowRecord]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    runtime.block_on(async {
        let hub = Arc::new(Hub::new("node-a".into(), settings()));
        hub.publish_flows(records);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let api = ApiSettings {
            grpc: Some(ADDRESS.parse().unwrap_or_else(|error| panic!("{error}"))),
            hubble: None,
            tls: None,
            client_ca: None,
            access: None,
            allow_plaintext: false,
        };
        let served = Served {
            hub: Arc::clone(&hub),
            peers: Arc::default(),
        };
        let serve = server::start(&api, served, async {
            let _ = stopped.await;
        })
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        let server = tokio::spawn(serve);
        for follow in [false, true] {
            let (received, bytes, elapsed) = stream(follow, &hub, records).await;
            println!(
                "grpc {} to one client: {received} records in {:.0} ms: {:.0} records/s, {:.1} MB/s, {} bytes/record on the wire",
                if follow { "follow (publish while streaming)" } else { "replay" },
                elapsed.as_secs_f64() * 1e3,
                received as f64 / elapsed.as_secs_f64(),
                bytes as f64 / elapsed.as_secs_f64() / 1e6,
                bytes / received.max(1)
            );
        }
        let _ = stop.send(());
        hub.close();
        let _ = server.await;
    });
}

fn file_sink(records: &[FlowRecord]) {
    let directory = std::env::temp_dir().join(format!("flow-agent-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&directory);
    let path = directory.join("flows.jsonl");
    let mut sink = FileSink::open(FileSinkSettings {
        path: path.clone(),
        max_bytes: 16 << 20,
        keep: 2,
    })
    .unwrap_or_else(|error| panic!("{error}"));
    let stats = sink.stats();
    let began = Instant::now();
    for batch in records.chunks(10_000) {
        let _ = sink.flows(batch);
    }
    let handed_over = began.elapsed();
    drop(sink);
    let written = began.elapsed();
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "file sink: {:.0} ns/record on the agent's thread (serialize and hand over), all written in {:.0} ms ({:.0} records/s); written {}, dropped {}, rotations {}",
        handed_over.as_nanos() as f64 / RECORDS as f64,
        written.as_secs_f64() * 1e3,
        RECORDS as f64 / written.as_secs_f64(),
        stats.written.load(Relaxed),
        stats.dropped.load(Relaxed),
        stats.rotations.load(Relaxed),
    );
    let _ = std::fs::remove_dir_all(&directory);
}

fn main() {
    let records = records();
    for followers in [0, 1, 4] {
        publish(&records, followers);
    }
    grpc(&records);
    file_sink(&records);
}
