//! The records the API serves: a bounded buffer of recent flow records and
//! aggregates, and the subscribers that follow them.
//!
//! Publishing never waits. Each subscriber has a bounded queue; when it is
//! full the record is counted as lost for that subscriber, and the next thing
//! the subscriber receives is a [`Delivery::Lost`] with the exact count. A slow
//! subscriber therefore slows neither the agent nor the other subscribers.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use flow_dns::DnsMessage;
use flow_proto::v1 as proto;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::convert;
use crate::{aggregate::AggregateRecord, datapath::DatapathCounters};
use flow_model::record::FlowRecord;
use flow_policy::learner::LearnedGraph;

/// A flow record in the buffer. Its identities are shared with the agent's
/// other records; the protobuf form is made per send, so the buffer holds one
/// copy of each record only.
#[derive(Debug)]
pub struct StoredFlow {
    /// The record.
    pub record: FlowRecord,
    /// Its position among every record the agent produced.
    pub sequence: u64,
    /// The DNS message of a Hubble L7 DNS flow (`--dns-flows`); its record
    /// is the one packet that carried it. Only the Hubble API serves these.
    pub dns: Option<Box<DnsMessage>>,
}

impl StoredFlow {
    /// The protobuf form.
    pub fn message(&self) -> proto::Flow {
        convert::flow(&self.record, self.sequence)
    }
}

/// An aggregate in the buffer.
#[derive(Debug)]
pub struct StoredAggregate {
    /// The aggregate.
    pub record: AggregateRecord,
    /// Its protobuf form.
    pub message: proto::Aggregate,
}

trait Timed {
    fn time(&self) -> SystemTime;
}

impl Timed for StoredFlow {
    fn time(&self) -> SystemTime {
        self.record.time.0
    }
}

impl Timed for StoredAggregate {
    fn time(&self) -> SystemTime {
        self.record.interval_end.0
    }
}

/// What a subscriber's queue carries.
#[derive(Debug)]
pub enum Delivery<T> {
    /// A record.
    Record(Arc<T>),
    /// This many records were not delivered since the last one that was.
    Lost(u64),
}

type Accept<T> = Box<dyn Fn(&T) -> bool + Send>;

struct Subscriber<T> {
    sender: mpsc::Sender<Delivery<T>>,
    accept: Accept<T>,
    /// Who subscribed, for the loss metric.
    client: Arc<str>,
    /// Records lost and not yet reported. Shared with the [`Feed`], which
    /// reports what is left when its stream ends.
    unreported: Arc<AtomicU64>,
}

struct Channel<T> {
    buffer: VecDeque<Arc<T>>,
    capacity: usize,
    subscribers: Vec<Subscriber<T>>,
    /// Records lost, by client, since start.
    lost_by_client: BTreeMap<Arc<str>, u64>,
    /// Set at shutdown once followers had their time: each feed then
    /// reports what it still holds as lost instead of delivering it.
    cut: Arc<AtomicBool>,
}

impl<T: Timed> Channel<T> {
    fn new(capacity: usize) -> Self {
        Self {
            buffer: VecDeque::with_capacity(capacity.min(65_536)),
            capacity,
            subscribers: Vec::new(),
            lost_by_client: BTreeMap::new(),
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// How many of the first `count` items of a batch no one would see: with
    /// no subscriber, those the buffer would drop again before the batch
    /// ends. They need not be copied.
    fn unseen(&self, count: usize) -> usize {
        if self.subscribers.is_empty() {
            count.saturating_sub(self.capacity)
        } else {
            0
        }
    }

    /// Stores a record and offers it to every subscriber that accepts it.
    /// Returns how many deliveries were lost.
    fn publish(&mut self, item: Arc<T>) -> u64 {
        if self.capacity > 0 {
            if self.buffer.len() == self.capacity {
                self.buffer.pop_front();
            }
            self.buffer.push_back(Arc::clone(&item));
        }
        let mut lost = 0;
        let lost_by_client = &mut self.lost_by_client;
        let mut lose = |subscriber: &Subscriber<T>| {
            subscriber.unreported.fetch_add(1, Ordering::Relaxed);
            *lost_by_client
                .entry(Arc::clone(&subscriber.client))
                .or_default() += 1;
        };
        self.subscribers.retain_mut(|subscriber| {
            // A client that went away is dropped here, not only when a
            // record it accepts fails to send: one whose filter never
            // matches again would otherwise stay forever.
            if subscriber.sender.is_closed() {
                return false;
            }
            if !(subscriber.accept)(&item) {
                return true;
            }
            // Tell about earlier losses before anything else.
            let unreported = subscriber.unreported.load(Ordering::Relaxed);
            if unreported > 0 {
                match subscriber.sender.try_send(Delivery::Lost(unreported)) {
                    Ok(()) => {
                        subscriber
                            .unreported
                            .fetch_sub(unreported, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(_)) => {
                        lose(subscriber);
                        lost += 1;
                        return true;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            match subscriber
                .sender
                .try_send(Delivery::Record(Arc::clone(&item)))
            {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    lose(subscriber);
                    lost += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        lost
    }

    /// The replay and, with `follow`, a queue registered in the same critical
    /// section, so nothing is missed or repeated between the two.
    fn subscribe(
        &mut self,
        window: Replay,
        follow: bool,
        queue: usize,
        client: &str,
        accept: Accept<T>,
    ) -> Subscription<T> {
        let replay = window.select(&self.buffer, &accept);
        let live = follow.then(|| {
            let (sender, receiver) = mpsc::channel(queue.max(1));
            let unreported = Arc::new(AtomicU64::new(0));
            self.subscribers.push(Subscriber {
                sender,
                accept,
                client: Arc::from(client),
                unreported: Arc::clone(&unreported),
            });
            Feed {
                receiver,
                unreported,
                cut: Arc::clone(&self.cut),
            }
        });
        Subscription { replay, live }
    }
}

/// Which buffered records a subscriber gets first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// At most this many (`None`: every record in the window).
    pub limit: Option<u64>,
    /// The earliest `limit` instead of the last.
    pub first: bool,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Only records at or before this time.
    pub until: Option<SystemTime>,
}

impl Replay {
    /// The last `count` records.
    pub fn last(count: u64) -> Self {
        Self {
            limit: Some(count),
            ..Self::default()
        }
    }

    fn contains(&self, time: SystemTime) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time <= until)
    }

    /// The accepted records of `buffer` in the window, oldest first.
    fn select<T: Timed>(&self, buffer: &VecDeque<Arc<T>>, accept: &Accept<T>) -> Vec<Arc<T>> {
        let limit = self.limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        let wanted = |item: &&Arc<T>| self.contains(item.time()) && accept(item);
        if self.first {
            return buffer.iter().filter(wanted).take(limit).cloned().collect();
        }
        let mut replay: Vec<Arc<T>> = buffer
            .iter()
            .rev()
            .filter(wanted)
            .take(limit)
            .cloned()
            .collect();
        replay.reverse();
        replay
    }
}

/// A subscriber's view: buffered records to replay, then, when following, the
/// feed of new ones.
pub struct Subscription<T> {
    /// Buffered records, oldest first.
    pub replay: Vec<Arc<T>>,
    /// New records, when following.
    pub live: Option<Feed<T>>,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// The replay, then the live deliveries, each through `record` or `lost`.
    /// The stream ends when the feed does, or at the first record for which
    /// `record` returns `None`.
    pub fn into_stream<R: Send + 'static>(
        self,
        mut record: impl FnMut(&T) -> Option<R> + Send + 'static,
        mut lost: impl FnMut(u64) -> R + Send + 'static,
    ) -> impl futures::Stream<Item = R> + Send + 'static {
        use futures::StreamExt as _;
        let Self { replay, live } = self;
        let followed = futures::stream::unfold(live, |live| async move {
            let mut feed = live?;
            let delivery = feed.next().await?;
            Some((delivery, Some(feed)))
        });
        futures::stream::iter(replay.into_iter().map(Delivery::Record))
            .chain(followed)
            .scan((), move |(), delivery| {
                futures::future::ready(match delivery {
                    Delivery::Record(item) => record(&item),
                    Delivery::Lost(count) => Some(lost(count)),
                })
            })
    }
}

/// A following subscriber's queue of new records.
pub struct Feed<T> {
    receiver: mpsc::Receiver<Delivery<T>>,
    unreported: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl<T> Feed<T> {
    /// The next delivery; `None` once the hub has closed and the queue is
    /// drained. Losses after the last delivered record are reported then, as a
    /// final [`Delivery::Lost`], so the count is exact to the end. Once the
    /// hub cut followers short ([`Hub::cut_short`]), what is still queued is
    /// that final loss.
    pub async fn next(&mut self) -> Option<Delivery<T>> {
        if self.cut.load(Ordering::Acquire) {
            return self.cut_short();
        }
        match self.receiver.recv().await {
            Some(delivery) => Some(delivery),
            // No sender remains: the hub no longer touches the counter.
            None => match self.unreported.swap(0, Ordering::Relaxed) {
                0 => None,
                count => Some(Delivery::Lost(count)),
            },
        }
    }

    /// Everything still queued, and losses not yet reported, as one loss.
    fn cut_short(&mut self) -> Option<Delivery<T>> {
        let mut count = self.unreported.swap(0, Ordering::Relaxed);
        while let Ok(delivery) = self.receiver.try_recv() {
            count += match delivery {
                Delivery::Record(_) => 1,
                Delivery::Lost(lost) => lost,
            };
        }
        (count > 0).then_some(Delivery::Lost(count))
    }

    /// The next delivery if one is queued.
    pub fn try_next(&mut self) -> Option<Delivery<T>> {
        self.receiver.try_recv().ok()
    }
}

/// The agent's state, for ServerStatus.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// Attached interfaces.
    pub interfaces: Vec<String>,
    /// Datapath counters.
    pub counters: DatapathCounters,
    /// Monitor mode is on.
    pub monitoring: bool,
    /// Violations since start.
    pub violations: u64,
}

struct State {
    flows: Channel<StoredFlow>,
    aggregates: Channel<StoredAggregate>,
    status: NodeStatus,
    namespaces: NamespacesSeen,
    rate: FlowRate,
    /// The agent is stopping: new subscriptions get their replay only.
    closed: bool,
}

/// How far back GetNamespaces looks.
pub const NAMESPACE_WINDOW: Duration = Duration::from_secs(3600);

/// When each namespace last had a flow, and for which tenants: a tenant
/// caller sees the namespaces of flows it may see.
#[derive(Debug, Default)]
struct NamespacesSeen {
    /// Namespace -> when last seen, by tenant of a flow's end (`None`: any).
    seen: HashMap<String, HashMap<Option<String>, SystemTime>>,
}

impl NamespacesSeen {
    fn note(&mut self, aggregate: &AggregateRecord) {
        let time = aggregate.interval_end.0;
        let tenants = [&aggregate.source.tenant, &aggregate.destination.tenant];
        for namespace in [
            &aggregate.source.namespace,
            &aggregate.destination.namespace,
        ]
        .into_iter()
        .flatten()
        {
            let seen = self.seen.entry(namespace.clone()).or_default();
            for tenant in std::iter::once(None).chain(tenants.into_iter().flatten().map(Some)) {
                let last = seen.entry(tenant.cloned()).or_insert(time);
                *last = (*last).max(time);
            }
        }
    }

    /// Namespaces with a flow visible to `tenant` (`None`: any) since `after`,
    /// sorted; older entries are forgotten.
    fn since(&mut self, after: SystemTime, tenant: Option<&str>) -> Vec<String> {
        self.seen.retain(|_, seen| {
            seen.retain(|_, last| *last >= after);
            !seen.is_empty()
        });
        let key = tenant.map(str::to_owned);
        let mut namespaces: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, seen)| seen.contains_key(&key))
            .map(|(namespace, _)| namespace.clone())
            .collect();
        namespaces.sort_unstable();
        namespaces
    }
}

/// Flows published per second over the last minute.
#[derive(Debug, Default)]
struct FlowRate {
    batches: VecDeque<(Instant, u64)>,
}

/// The window of [`FlowRate`].
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl FlowRate {
    fn note(&mut self, now: Instant, flows: u64) {
        self.batches.push_back((now, flows));
        while self
            .batches
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.batches.pop_front();
        }
    }

    fn per_second(&self, now: Instant, uptime: Duration) -> f64 {
        let flows: u64 = self
            .batches
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= RATE_WINDOW)
            .map(|(_, flows)| flows)
            .sum();
        flows as f64
            / uptime
                .clamp(Duration::from_secs(1), RATE_WINDOW)
                .as_secs_f64()
    }
}

impl State {
    /// Room for one more following subscriber, counting only those still
    /// connected.
    fn admit(&mut self, limit: usize) -> Result<(), TooManySubscribers> {
        self.flows
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        self.aggregates
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        if self.flows.subscribers.len() + self.aggregates.subscribers.len() >= limit {
            return Err(TooManySubscribers { limit });
        }
        Ok(())
    }
}

/// Every following slot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{limit} following subscribers already (grpc-max-subscribers); try again later")]
pub struct TooManySubscribers {
    /// The limit.
    pub limit: usize,
}

/// Sizes of the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// Flow records kept for replay.
    pub buffer: usize,
    /// Aggregates kept for replay.
    pub aggregate_buffer: usize,
    /// Queue length of each following subscriber.
    pub subscriber_queue: usize,
    /// Following subscribers (flows and aggregates together) at most.
    pub max_subscribers: usize,
}

/// The API's record store and fan-out.
pub struct Hub {
    state: Mutex<State>,
    graph: std::sync::OnceLock<LearnedGraph>,
    settings: HubSettings,
    node: String,
    started: Instant,
    /// Random: tells this agent run's records from any other's (Hubble UUIDs).
    run: u64,
    flows_seen: AtomicU64,
    lost_records: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.node)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// An empty hub for `node`.
    pub fn new(node: String, settings: HubSettings) -> Self {
        Self {
            state: Mutex::new(State {
                flows: Channel::new(settings.buffer),
                aggregates: Channel::new(settings.aggregate_buffer),
                status: NodeStatus::default(),
                namespaces: NamespacesSeen::default(),
                rate: FlowRate::default(),
                closed: false,
            }),
            graph: std::sync::OnceLock::new(),
            settings,
            node,
            started: Instant::now(),
            run: random_u64(),
            flows_seen: AtomicU64::new(0),
            lost_records: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent: a poisoned lock
        // (a panic elsewhere) still holds usable data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// This agent run's random identifier.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The hub's sizes.
    pub fn settings(&self) -> HubSettings {
        self.settings
    }

    /// Stores a drain's records and offers them to subscribers.
    pub fn publish_flows(&self, records: &[FlowRecord]) {
        let mut state = self.state();
        state.rate.note(Instant::now(), records.len() as u64);
        let unseen = state.flows.unseen(records.len());
        self.flows_seen.fetch_add(unseen as u64, Ordering::Relaxed);
        let mut lost = 0;
        for record in &records[unseen..] {
            let sequence = self.flows_seen.fetch_add(1, Ordering::Relaxed);
            lost += state.flows.publish(Arc::new(StoredFlow {
                record: record.clone(),
                sequence,
                dns: None,
            }));
        }
        self.lost_records.fetch_add(lost, Ordering::Relaxed);
    }

    /// Stores DNS messages as flows, each with the record of its packet, in
    /// the same buffer (and under the same limits) as the flow records.
    pub fn publish_dns(&self, messages: Vec<(FlowRecord, DnsMessage)>) {
        if messages.is_empty() {
            return;
        }
        let mut state = self.state();
        state.rate.note(Instant::now(), messages.len() as u64);
        let mut lost = 0;
        for (record, message) in messages {
            let sequence = self.flows_seen.fetch_add(1, Ordering::Relaxed);
            lost += state.flows.publish(Arc::new(StoredFlow {
                record,
                sequence,
                dns: Some(Box::new(message)),
            }));
        }
        self.lost_records.fetch_add(lost, Ordering::Relaxed);
    }

    /// Stores an interval's aggregates and offers them to subscribers.
    pub fn publish_aggregates(&self, aggregates: &[AggregateRecord]) {
        let mut state = self.state();
        for aggregate in aggregates {
            state.namespaces.note(aggregate);
        }
        let unseen = state.aggregates.unseen(aggregates.len());
        let mut lost = 0;
        for aggregate in &aggregates[unseen..] {
            let message = convert::aggregate(aggregate, &self.node);
            lost += state.aggregates.publish(Arc::new(StoredAggregate {
                record: aggregate.clone(),
                message,
            }));
        }
        self.lost_records.fetch_add(lost, Ordering::Relaxed);
    }

    /// Serves this learned graph (set once, when learning).
    pub fn attach_graph(&self, graph: LearnedGraph) {
        let _ = self.graph.set(graph);
    }

    /// The learned graph, when learning.
    pub fn graph(&self) -> Option<&LearnedGraph> {
        self.graph.get()
    }

    /// Records the agent's state.
    pub fn set_status(&self, status: NodeStatus) {
        self.state().status = status;
    }

    /// Subscribes `client` to flow records.
    pub fn subscribe_flows(
        &self,
        replay: Replay,
        follow: bool,
        client: &str,
        accept: impl Fn(&StoredFlow) -> bool + Send + 'static,
    ) -> Result<Subscription<StoredFlow>, TooManySubscribers> {
        let queue = self.settings.subscriber_queue;
        let mut state = self.state();
        let follow = follow && !state.closed;
        if follow {
            state.admit(self.settings.max_subscribers)?;
        }
        Ok(state
            .flows
            .subscribe(replay, follow, queue, client, Box::new(accept)))
    }

    /// Subscribes `client` to aggregates.
    pub fn subscribe_aggregates(
        &self,
        replay: Replay,
        follow: bool,
        client: &str,
        accept: impl Fn(&StoredAggregate) -> bool + Send + 'static,
    ) -> Result<Subscription<StoredAggregate>, TooManySubscribers> {
        let queue = self.settings.subscriber_queue;
        let mut state = self.state();
        let follow = follow && !state.closed;
        if follow {
            state.admit(self.settings.max_subscribers)?;
        }
        Ok(state
            .aggregates
            .subscribe(replay, follow, queue, client, Box::new(accept)))
    }

    /// Records lost since start, by client.
    pub fn lost_by_client(&self) -> BTreeMap<String, u64> {
        let state = self.state();
        let mut lost = BTreeMap::new();
        for (client, count) in state
            .flows
            .lost_by_client
            .iter()
            .chain(&state.aggregates.lost_by_client)
        {
            *lost.entry(client.to_string()).or_default() += count;
        }
        lost
    }

    /// Following subscribers.
    pub fn subscribers(&self) -> u64 {
        let state = self.state();
        (state.flows.subscribers.len() + state.aggregates.subscribers.len()) as u64
    }

    /// Ends every following stream (after its queue drains): the agent stops.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.flows.subscribers.clear();
        state.aggregates.subscribers.clear();
    }

    /// After [`Hub::close`], when followers could not read everything in
    /// time: each feed reports what it still holds as lost, then ends, so a
    /// slow follower's stream ends properly and tells it what it missed.
    pub fn cut_short(&self) {
        let state = self.state();
        debug_assert!(state.closed, "followers are cut short only after close");
        state.flows.cut.store(true, Ordering::Release);
        state.aggregates.cut.store(true, Ordering::Release);
    }

    /// The ServerStatus answer.
    pub fn status(&self, version: &str) -> proto::ServerStatusResponse {
        let state = self.state();
        let NodeStatus {
            interfaces,
            counters,
            monitoring,
            violations,
        } = &state.status;
        let graph_edges = self.graph().map_or(0, |graph| graph.read().len() as u64);
        proto::ServerStatusResponse {
            node_name: self.node.clone(),
            version: version.to_owned(),
            uptime_seconds: self.uptime().as_secs(),
            flows_seen: self.flows_seen.load(Ordering::Relaxed),
            flows_in_buffer: state.flows.buffer.len() as u64,
            buffer_capacity: self.settings.buffer as u64,
            interfaces: interfaces.clone(),
            map_full: counters.get(flow_common::Counter::MapFull),
            spilled: counters.get(flow_common::Counter::Spilled),
            lost_packets: counters.get(flow_common::Counter::Lost),
            lost_records: self.lost_records.load(Ordering::Relaxed),
            subscribers: (state.flows.subscribers.len() + state.aggregates.subscribers.len())
                as u64,
            graph_edges,
            violations: *violations,
            learning: self.graph().is_some(),
            monitoring: *monitoring,
        }
    }

    /// Records dropped for subscribers that fell behind, since start.
    pub fn lost_records(&self) -> u64 {
        self.lost_records.load(Ordering::Relaxed)
    }

    /// Records produced since start.
    pub fn flows_seen(&self) -> u64 {
        self.flows_seen.load(Ordering::Relaxed)
    }

    /// Records in the replay buffer.
    pub fn flows_buffered(&self) -> u64 {
        self.state().flows.buffer.len() as u64
    }

    /// Flows per second over the last minute.
    pub fn flow_rate(&self) -> f64 {
        self.state().rate.per_second(Instant::now(), self.uptime())
    }

    /// Namespaces with flows since `after` that `tenant` may see (`None`:
    /// every namespace), sorted.
    pub fn namespaces_since(&self, after: SystemTime, tenant: Option<&str>) -> Vec<String> {
        self.state().namespaces.since(after, tenant)
    }
}

/// A random number, from the standard library's per-process hash keys (which
/// come from the operating system's random source).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_model::record::{Endpoint, Hook, Protocol, Timestamp};

    fn record(port: u16, seconds: u64) -> FlowRecord {
        let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        FlowRecord {
            time,
            first_seen: time,
            source: Endpoint::new("10.0.0.1".parse().unwrap(), port),
            destination: Endpoint::new("10.0.0.2".parse().unwrap(), 80),
            protocol: Protocol(6),
            icmp: None,
            packets: 1,
            bytes: 40,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "n".into(),
            cross_tenant: None,
            new_connection: false,
            violation: false,
        }
    }

    fn hub(buffer: usize, queue: usize) -> Hub {
        Hub::new(
            "n".into(),
            HubSettings {
                buffer,
                aggregate_buffer: 10,
                subscriber_queue: queue,
                max_subscribers: 8,
            },
        )
    }

    fn ports(items: &[Arc<StoredFlow>]) -> Vec<u16> {
        items.iter().map(|item| item.record.source.port).collect()
    }

    #[test]
    fn a_batch_larger_than_the_buffer_keeps_its_last_records_and_counts_them_all() {
        let hub = hub(3, 4);
        let records: Vec<FlowRecord> = (1..=7).map(|n| record(n, 10)).collect();
        hub.publish_flows(&records[..2]);
        hub.publish_flows(&records[2..]);
        let replay = hub
            .subscribe_flows(Replay::last(100), false, "test", |_| true)
            .unwrap()
            .replay;
        assert_eq!(ports(&replay), [5, 6, 7]);
        assert_eq!(
            replay.iter().map(|item| item.sequence).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(hub.flows_seen(), 7);
    }

    #[test]
    fn replay_takes_the_last_n_and_or_those_since_a_time_from_a_bounded_buffer() {
        let hub = hub(5, 4);
        let records: Vec<FlowRecord> = (1..=8).map(|n| record(n, u64::from(n) * 10)).collect();
        hub.publish_flows(&records);
        let at = |seconds| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(
            ports(
                &hub.subscribe_flows(Replay::last(0), false, "test", |_| true)
                    .unwrap()
                    .replay
            ),
            [] as [u16; 0]
        );
        assert_eq!(
            ports(
                &hub.subscribe_flows(Replay::last(2), false, "test", |_| true)
                    .unwrap()
                    .replay
            ),
            [7, 8]
        );
        assert_eq!(
            ports(
                &hub.subscribe_flows(Replay::last(100), false, "test", |_| true)
                    .unwrap()
                    .replay
            ),
            [4, 5, 6, 7, 8]
        );
        assert_eq!(
            ports(
                &hub.subscribe_flows(
                    Replay {
                        since: at(60),
                        ..Replay::default()
                    },
                    false,
                    "test",
                    |_| true
                )
                .unwrap()
                .replay
            ),
            [6, 7, 8]
        );
        assert_eq!(
            ports(
                &hub.subscribe_flows(
                    Replay {
                        since: at(60),
                        ..Replay::last(1)
                    },
                    false,
                    "test",
                    |_| true
                )
                .unwrap()
                .replay
            ),
            [8]
        );
        let even = |flow: &StoredFlow| flow.record.source.port.is_multiple_of(2);
        assert_eq!(
            ports(
                &hub.subscribe_flows(Replay::last(10), false, "test", even)
                    .unwrap()
                    .replay
            ),
            [4, 6, 8]
        );
        // Sequence numbers count every record.
        let last = hub
            .subscribe_flows(Replay::last(1), false, "test", |_| true)
            .unwrap()
            .replay;
        assert_eq!(last[0].sequence, 7);
        assert_eq!(last[0].message().sequence, 7);
    }

    #[tokio::test]
    async fn a_full_queue_loses_records_and_says_exactly_how_many() {
        let hub = hub(100, 2);
        let mut slow = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| true)
            .unwrap()
            .live
            .unwrap();
        let mut fast = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| true)
            .unwrap()
            .live
            .unwrap();
        let mut fast_seen = 0;
        for port in 1..=10 {
            hub.publish_flows(&[record(port, 1)]);
            while let Some(delivery) = fast.try_next() {
                assert!(matches!(delivery, Delivery::Record(_)));
                fast_seen += 1;
            }
        }
        assert_eq!(fast_seen, 10, "the fast subscriber lost nothing");
        // The slow one holds records 1 and 2; 3..=10 were lost.
        let mut received = Vec::new();
        while let Some(delivery) = slow.try_next() {
            received.push(delivery);
        }
        assert_eq!(received.len(), 2);
        assert_eq!(hub.lost_records(), 8);
        // The next record is preceded by the loss count.
        hub.publish_flows(&[record(11, 1)]);
        assert!(matches!(slow.try_next(), Some(Delivery::Lost(8))));
        assert!(
            matches!(slow.try_next(), Some(Delivery::Record(item)) if item.record.source.port == 11)
        );
        assert_eq!(hub.status("v").lost_records, 8);
        // Losses after the last delivered record are reported when the stream
        // ends: 12 and 13 fill the queue, 14 does not fit.
        drop(fast);
        for port in 12..=14 {
            hub.publish_flows(&[record(port, 1)]);
        }
        hub.close();
        let mut tail = Vec::new();
        while let Some(delivery) = slow.next().await {
            tail.push(match delivery {
                Delivery::Record(item) => format!("record {}", item.record.source.port),
                Delivery::Lost(count) => format!("lost {count}"),
            });
        }
        assert_eq!(tail, ["record 12", "record 13", "lost 1"]);
        assert_eq!(hub.lost_records(), 9);
    }

    #[tokio::test]
    async fn a_follower_cut_short_at_shutdown_is_told_what_it_did_not_read() {
        let hub = hub(10, 4);
        let mut slow = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| true)
            .unwrap()
            .live
            .unwrap();
        // Records 1..=4 fill its queue, 5 is lost; it reads record 1.
        for port in 1..=5 {
            hub.publish_flows(&[record(port, 1)]);
        }
        assert!(
            matches!(slow.next().await, Some(Delivery::Record(item)) if item.record.source.port == 1)
        );
        hub.close();
        hub.cut_short();
        // 2, 3 and 4 still queued, and 5 never reported: one loss of 4, then
        // the end.
        assert!(matches!(slow.next().await, Some(Delivery::Lost(4))));
        assert!(slow.next().await.is_none());
    }

    #[tokio::test]
    async fn closed_subscribers_are_dropped_and_close_ends_streams() {
        let hub = hub(10, 4);
        let dropped = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| true)
            .unwrap()
            .live
            .unwrap();
        drop(dropped);
        let mut kept = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| true)
            .unwrap()
            .live
            .unwrap();
        // One whose filter never matches again is dropped all the same.
        let never = hub
            .subscribe_flows(Replay::last(0), true, "test", |_| false)
            .unwrap()
            .live
            .unwrap();
        drop(never);
        hub.publish_flows(&[record(1, 1)]);
        assert_eq!(hub.status("v").subscribers, 1);
        hub.close();
        assert!(matches!(kept.next().await, Some(Delivery::Record(_))));
        assert!(kept.next().await.is_none());
        // Once closed, a follow request gets its replay and no queue that
        // would never end.
        let late = hub
            .subscribe_flows(Replay::last(10), true, "test", |_| true)
            .unwrap();
        assert_eq!(late.replay.len(), 1);
        assert!(late.live.is_none());
        assert_eq!(hub.status("v").subscribers, 0);
    }

    #[test]
    fn at_most_max_subscribers_follow_at_once() {
        let hub = hub(10, 4);
        // At most `max_subscribers` follow at once (8 here); those that went
        // away free their slot, and replay-only requests need none.
        let mut feeds: Vec<_> = (0..8)
            .map(|_| {
                hub.subscribe_flows(Replay::last(0), true, "test", |_| true)
                    .unwrap()
                    .live
                    .unwrap()
            })
            .collect();
        let full = hub
            .subscribe_aggregates(Replay::last(0), true, "test", |_| true)
            .err()
            .unwrap();
        assert_eq!(full, TooManySubscribers { limit: 8 });
        assert!(
            hub.subscribe_flows(Replay::last(5), false, "test", |_| true)
                .is_ok()
        );
        feeds.pop();
        assert!(
            hub.subscribe_flows(Replay::last(0), true, "test", |_| true)
                .is_ok()
        );
    }
}
