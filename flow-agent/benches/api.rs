//! The flow APIs' costs: publishing into the hub with 0, 1 and 4 following
//! subscribers (one of them tenant-scoped and filtered), the memory of the
//! replay buffer, gRPC streaming to one client (replay and follow) through
//! flow-agent's FlowService and through Hubble's Observer, the cost of a
//! five-field Hubble filter per flow, and the rotating file sink. Prints
//! figures (medians of interleaved rounds); asserts nothing.
//!
//! `cargo bench -p flow-agent --bench api` (no root needed; listens on
//! 127.0.0.1:47110).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use flow_model::identity::{Identity, PeerKind, Workload};

use flow_model::record::{Endpoint, FlowRecord, Hook, Protocol, Timestamp};

use flow_agent::{
    api::{
        filter::{FlowMatcher, Scope},
        hub::{Hub, HubSettings, Replay, StoredFlow},
        hubble::filter::HubbleMatcher,
        sent::SentBytes,
        server::{self, ApiSettings, Authz, HubbleSettings, Served},
    },
    output::{FileSink, FileSinkSettings, RecordSink as _},
};
use flow_proto::hubble::{
    self,
    flow::FlowFilter as HubbleFlowFilter,
    observer::{get_flows_response::ResponseTypes, observer_client::ObserverClient},
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
        names: Vec::new(),
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
            icmp_errors: None,
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

/// Publishes the records in the background, as drains do.
fn publish_in_background(hub: &Arc<Hub>, records: &[FlowRecord]) {
    let hub = Arc::clone(hub);
    let records = records.to_vec();
    tokio::task::spawn_blocking(move || {
        for batch in records.chunks(10_000) {
            hub.publish_flows(batch);
        }
    });
}

async fn channel() -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{ADDRESS}"))
        .unwrap_or_else(|error| panic!("{error}"))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect: {error}"))
}

/// FlowService GetFlows: (records received, bytes on the wire, elapsed).
async fn stream(follow: bool, hub: &Arc<Hub>, records: &[FlowRecord]) -> (usize, usize, Duration) {
    let mut client = FlowServiceClient::new(channel().await).max_decoding_message_size(16 << 20);
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
        publish_in_background(hub, records);
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

/// Hubble's GetFlows, as hubble-relay asks: (flows received, bytes, elapsed).
async fn hubble_stream(
    follow: bool,
    hub: &Arc<Hub>,
    records: &[FlowRecord],
) -> (usize, usize, Duration) {
    let mut client = ObserverClient::new(channel().await).max_decoding_message_size(16 << 20);
    let request = hubble::observer::GetFlowsRequest {
        number: if follow { 0 } else { RECORDS as u64 },
        follow,
        ..hubble::observer::GetFlowsRequest::default()
    };
    let mut responses = client
        .get_flows(request)
        .await
        .unwrap_or_else(|status| panic!("{status}"))
        .into_inner();
    let began = Instant::now();
    if follow {
        publish_in_background(hub, records);
    }
    let (mut received, mut bytes, mut lost) = (0, 0, 0);
    while received + lost < RECORDS {
        let Ok(Some(message)) = responses.message().await else {
            break;
        };
        bytes += message.encoded_len();
        match message.response_types {
            Some(ResponseTypes::Flow(_)) => received += 1,
            Some(ResponseTypes::LostEvents(events)) => lost += events.num_events_lost as usize,
            _ => {}
        }
    }
    assert_eq!(lost, 0, "the bench's queue holds everything");
    (received, bytes, began.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rounds of each streaming case, interleaved.
const ROUNDS: usize = 3;

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
        let address = ADDRESS.parse().unwrap_or_else(|error| panic!("{error}"));
        // Both APIs on one listener.
        let api = ApiSettings {
            grpc: Some(address),
            hubble: Some(HubbleSettings {
                listen: address,
                tls_server_name: "{node}.default.hubble-grpc.cilium.io".into(),
            }),
            tls: None,
            client_ca: None,
            access: None,
            authz: Authz::File,
            allow_plaintext: false,
        };
        let served = Served {
            hub: Arc::clone(&hub),
            peers: Arc::default(),
            sent: SentBytes::default(),
        };
        let serve = server::start(&api, served, async {
            let _ = stopped.await;
        })
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        let server = tokio::spawn(serve);
        let cases = [
            ("FlowService replay", false, false),
            ("FlowService follow (publish while streaming)", false, true),
            ("Hubble GetFlows replay", true, false),
            ("Hubble GetFlows follow (publish while streaming)", true, true),
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut wire = vec![0; cases.len()];
        for _ in 0..ROUNDS {
            for (index, (_, hubble, follow)) in cases.iter().enumerate() {
                let (received, bytes, elapsed) = if *hubble {
                    hubble_stream(*follow, &hub, records).await
                } else {
                    stream(*follow, &hub, records).await
                };
                rates[index].push(received as f64 / elapsed.as_secs_f64());
                wire[index] = bytes / received.max(1);
            }
        }
        for (index, (name, _, _)) in cases.iter().enumerate() {
            println!(
                "grpc {name} to one client, {RECORDS} records: median {:.0} records/s over {ROUNDS} interleaved rounds, {} bytes/record on the wire",
                median(rates[index].clone()),
                wire[index]
            );
        }
        let _ = stop.send(());
        hub.close();
        let _ = server.await;
    });
}

/// The cost per flow of a five-field Hubble filter over a follower that
/// accepts everything, medians of interleaved rounds: one filter that every
/// flow passes, so every field is evaluated (the worst case), and one that
/// selects a namespace's flows, as Hubble UI does, so most flows stop at
/// the first field.
fn hubble_filter(records: &[FlowRecord]) {
    let stored: Vec<StoredFlow> = records
        .iter()
        .enumerate()
        .map(|(sequence, record)| StoredFlow {
            record: record.clone(),
            sequence: sequence as u64,
            dns: None,
        })
        .collect();
    let filter = |namespace: &str| HubbleFlowFilter {
        source_pod: vec![format!("{namespace}/app-")],
        destination_label: vec!["app, version notin (v0, v2)".into()],
        destination_port: vec!["8080".into()],
        protocol: vec!["tcp".into()],
        reply: vec![false],
        ..HubbleFlowFilter::default()
    };
    let compile = |filters: &[HubbleFlowFilter]| {
        HubbleMatcher::compile(filters, &[], 1).unwrap_or_else(|error| panic!("{error}"))
    };
    let cases = [
        ("every field evaluated", compile(&[filter("")])),
        ("one namespace", compile(&[filter("tenant-3")])),
        ("no filter", compile(&[])),
    ];
    let time = |matcher: &HubbleMatcher| {
        let began = Instant::now();
        let matched = stored.iter().filter(|flow| matcher.matches(flow)).count();
        (
            began.elapsed().as_nanos() as f64 / stored.len() as f64,
            matched,
        )
    };
    let mut costs: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut selected = vec![0; cases.len()];
    for _ in 0..7 {
        for (index, (_, matcher)) in cases.iter().enumerate() {
            let (cost, matched) = time(matcher);
            costs[index].push(cost);
            selected[index] = matched;
        }
    }
    let baseline = median(costs[2].clone());
    for (index, (name, _)) in cases.iter().enumerate().take(2) {
        let cost = median(costs[index].clone());
        println!(
            "hubble filter of 5 fields (source_pod, destination_label selector, destination_port, protocol, reply), {name}: {cost:.0} ns/flow against {baseline:.0} with no filter, so {:.0} ns/flow for the filter ({} of {} flows selected; median of 7 interleaved rounds)",
            cost - baseline,
            selected[index],
            stored.len()
        );
    }
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
    hubble_filter(&records);
    file_sink(&records);
}
