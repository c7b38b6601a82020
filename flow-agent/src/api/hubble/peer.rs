//! Hubble's `peer.Peer`: every node's Observer, for hubble-relay.
//!
//! The agent publishes the cluster's nodes (from the Kubernetes Node watch or
//! the inventory's Node objects) into a [`PeerSet`]. Each Notify stream first
//! sends every node as PEER_ADDED, then compares each new set with the one it
//! last sent: PEER_DELETED, PEER_ADDED or PEER_UPDATED per difference. A
//! stream holds only a watch receiver and its last set, so a client that goes
//! away leaves nothing behind.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use flow_proto::hubble::peer::{
    ChangeNotification, ChangeNotificationType, NotifyRequest, Tls, peer_server::Peer,
};
use futures::{Stream, stream};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use flow_model::client::server_name;

use crate::api::{access::Access, rbac::Verb};

/// The nodes the Peer service announces: name and InternalIP, when known.
pub type Nodes = BTreeMap<String, Option<IpAddr>>;

/// The agent's side: publishes the current nodes.
#[derive(Debug)]
pub struct PeerSet {
    sender: watch::Sender<Arc<Nodes>>,
}

impl Default for PeerSet {
    fn default() -> Self {
        Self {
            sender: watch::Sender::new(Arc::new(Nodes::new())),
        }
    }
}

impl PeerSet {
    /// Publishes the nodes; streams learn of the differences. Nothing is sent
    /// when the set did not change.
    pub fn publish(&self, nodes: Nodes) {
        self.sender.send_if_modified(|current| {
            if **current == nodes {
                return false;
            }
            *current = Arc::new(nodes);
            true
        });
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Nodes>> {
        self.sender.subscribe()
    }

    /// The address of a node, when it is known.
    pub fn address(&self, node: &str) -> Option<IpAddr> {
        self.sender.borrow().get(node).copied().flatten()
    }
}

/// How a node's Observer is reached: the Hubble port on every node, and the
/// TLS server name template when the Observer serves TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddressing {
    /// The port every agent's Hubble listener uses.
    pub port: u16,
    /// With `{node}` for the node's name (dots become dashes, as Cilium does).
    pub tls_server_name: Option<String>,
}

impl PeerAddressing {
    /// The notification for a node.
    fn notification(
        &self,
        name: &str,
        address: Option<IpAddr>,
        kind: ChangeNotificationType,
    ) -> ChangeNotification {
        ChangeNotification {
            name: name.to_owned(),
            // A node whose address is unknown is announced without one: the
            // relay lists it and dials nothing.
            address: address
                .map_or_else(String::new, |ip| SocketAddr::new(ip, self.port).to_string()),
            r#type: kind as i32,
            tls: self.tls_server_name.as_ref().map(|template| Tls {
                server_name: server_name(template, name),
            }),
        }
    }
}

/// What changed from `old` to `new`, in name order: deletions, then
/// additions and updates.
fn changes(addressing: &PeerAddressing, old: &Nodes, new: &Nodes) -> Vec<ChangeNotification> {
    let deleted = old
        .iter()
        .filter(|(name, _)| !new.contains_key(*name))
        .map(|(name, address)| {
            addressing.notification(name, *address, ChangeNotificationType::PeerDeleted)
        });
    let changed = new
        .iter()
        .filter_map(|(name, address)| match old.get(name) {
            None => {
                Some(addressing.notification(name, *address, ChangeNotificationType::PeerAdded))
            }
            Some(before) if before != address => {
                Some(addressing.notification(name, *address, ChangeNotificationType::PeerUpdated))
            }
            Some(_) => None,
        });
    deleted.chain(changed).collect()
}

/// The Peer service.
#[derive(Debug)]
pub struct PeerService {
    peers: Arc<PeerSet>,
    addressing: PeerAddressing,
    access: Access,
}

impl PeerService {
    /// Serves `peers`.
    pub fn new(peers: Arc<PeerSet>, addressing: PeerAddressing, access: Access) -> Self {
        Self {
            peers,
            addressing,
            access,
        }
    }
}

type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

/// One Notify stream: the set last sent, and the changes not yet sent.
struct NotifyState {
    receiver: watch::Receiver<Arc<Nodes>>,
    addressing: PeerAddressing,
    sent: Arc<Nodes>,
    pending: VecDeque<ChangeNotification>,
    started: bool,
}

impl NotifyState {
    /// The next change: the first set at once, later ones as they differ
    /// from what was sent; `None` once the agent stops.
    async fn next(mut self) -> Option<(Result<ChangeNotification, Status>, Self)> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some((Ok(change), self));
            }
            if self.started {
                self.receiver.changed().await.ok()?;
            }
            self.started = true;
            let current = Arc::clone(&self.receiver.borrow_and_update());
            self.pending = changes(&self.addressing, &self.sent, &current).into();
            self.sent = current;
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(
        &self,
        request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        self.access.caller(&request, Verb::Watch).await?;
        let state = NotifyState {
            receiver: self.peers.subscribe(),
            addressing: self.addressing.clone(),
            sent: Arc::new(Nodes::new()),
            pending: VecDeque::new(),
            started: false,
        };
        Ok(Response::new(Box::pin(stream::unfold(
            state,
            NotifyState::next,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn nodes(entries: &[(&str, &str)]) -> Nodes {
        entries
            .iter()
            .map(|(name, ip)| ((*name).to_owned(), ip.parse().ok()))
            .collect()
    }

    fn summary(change: &ChangeNotification) -> String {
        let kind =
            ChangeNotificationType::try_from(change.r#type).map_or("?", |kind| kind.as_str_name());
        let tls = change
            .tls
            .as_ref()
            .map_or(String::new(), |tls| format!(" {}", tls.server_name));
        format!("{kind} {} {}{tls}", change.name, change.address)
    }

    /// A Notify stream of a service over `peers`.
    async fn notify(peers: &Arc<PeerSet>, port: u16, tls: Option<&str>) -> NotifyStream {
        let service = PeerService::new(
            Arc::clone(peers),
            PeerAddressing {
                port,
                tls_server_name: tls.map(str::to_owned),
            },
            Access::Open,
        );
        service
            .notify(Request::new(NotifyRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    #[tokio::test]
    async fn notify_sends_every_node_then_each_change_and_ends_with_the_agent() {
        let peers = Arc::new(PeerSet::default());
        peers.publish(nodes(&[("node-b", "10.0.0.2"), ("node-a", "fd00::1")]));
        let mut stream = notify(&peers, 4244, Some("{node}.default.hubble-grpc.cilium.io")).await;
        let mut next = async || summary(&stream.next().await.unwrap().unwrap());
        assert_eq!(
            next().await,
            "PEER_ADDED node-a [fd00::1]:4244 node-a.default.hubble-grpc.cilium.io"
        );
        assert_eq!(
            next().await,
            "PEER_ADDED node-b 10.0.0.2:4244 node-b.default.hubble-grpc.cilium.io"
        );
        // The same set again sends nothing; then a move, a new node and a
        // deletion arrive as one change each.
        peers.publish(nodes(&[("node-b", "10.0.0.2"), ("node-a", "fd00::1")]));
        peers.publish(nodes(&[("node-b", "10.0.0.9"), ("node.c", "")]));
        assert_eq!(
            next().await,
            "PEER_DELETED node-a [fd00::1]:4244 node-a.default.hubble-grpc.cilium.io"
        );
        assert_eq!(
            next().await,
            "PEER_UPDATED node-b 10.0.0.9:4244 node-b.default.hubble-grpc.cilium.io"
        );
        assert_eq!(
            next().await,
            "PEER_ADDED node.c  node-c.default.hubble-grpc.cilium.io"
        );
        // The agent stops: its set goes away, and so does the stream.
        drop(peers);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_goes_away_leaves_nothing_behind() {
        let peers = Arc::new(PeerSet::default());
        peers.publish(nodes(&[("node-a", "10.0.0.1")]));
        let mut stream = notify(&peers, 4244, None).await;
        assert!(stream.next().await.is_some());
        assert_eq!(peers.sender.receiver_count(), 1);
        drop(stream);
        assert_eq!(peers.sender.receiver_count(), 0);
        // Publishing with no one listening is fine, and so is a new client.
        peers.publish(nodes(&[("node-b", "10.0.0.2")]));
        let mut again = notify(&peers, 4244, None).await;
        let change = again.next().await.unwrap().unwrap();
        assert_eq!(summary(&change), "PEER_ADDED node-b 10.0.0.2:4244");
    }

    #[tokio::test]
    async fn without_tls_no_server_name_is_announced() {
        let peers = Arc::new(PeerSet::default());
        peers.publish(nodes(&[("node-a", "10.0.0.1")]));
        let change = notify(&peers, 4245, None)
            .await
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary(&change), "PEER_ADDED node-a 10.0.0.1:4245");
    }
}
