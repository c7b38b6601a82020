//! The sections of [`propose()`](super::propose()): what each end of an
//! edge is (worked out once per party, not once per edge), the (peer, port)
//! pairs each workload allows, then its rules and allowed lines.
//!
//! Peers are interned: an edge records a peer's number, and the peers are
//! put in [`PeerSpec`] order once, at the end. Per edge, two ends are
//! looked up and numbers pushed: nothing is cloned, no label map compared.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use hashbrown::HashMap;

use super::{
    GenerateOptions, LeftOut, NamedAddress, Note, PeerSpec, PolicyFormat, Proposal, RuleSpec,
    Sighting, WorkloadPolicy, cidr, edge_text, is_dns, peer_text, policy_name, port_ranges,
    push_decimal,
    rarity::{Judge, Verdict},
    resolver::Resolver,
};
use flow_model::{identity::PeerKind, record::Protocol};

use crate::{
    cilium::FqdnSelector,
    cluster::{ClusterView, Selection},
    graph::{EdgeKey, EdgeStats, Graph, Party, WorkloadRef},
    mermaid::map::{self, MapEdge},
};

/// A peer, a protocol and a port a workload allows in one direction. The
/// peer is its number: first in order of appearance, then its rank in
/// [`PeerSpec`] order.
type Allowance = (usize, Protocol, u16);

/// Why an end is not (only) a peer, said for each edge it is on.
#[derive(Clone, Copy, Debug)]
enum EndNote {
    /// A node's address, which Cilium matches by CIDR only in one mode.
    RemoteNode,
    /// A Service whose backends were not told apart.
    Service,
    /// A workload on the node's network.
    HostNetwork,
}

/// What an end is as the other end's peer.
#[derive(Clone, Copy, Debug)]
struct AsPeer {
    peer: Option<usize>,
    note: Option<EndNote>,
}

/// One end of edges, as the generator sees it.
struct End<'g> {
    party: &'g Party,
    /// Gets a policy: its place in [`Proposer::sides`].
    subject: Option<usize>,
    /// In a platform or excluded namespace: its edges never cross tenants.
    tenantless: bool,
    tenant: Option<&'g str>,
    host_network: bool,
    /// Worked out when an edge first needs it: selecting a workload's pods
    /// notes what is wrong with its labels, which only the ends of edges
    /// that can be allowed may do.
    as_peer: Option<AsPeer>,
    /// The workload's selector, once worked out.
    selection: Option<Selection>,
    /// Its name in REVIEW.md, once a rare edge needs it.
    text: Option<Arc<str>>,
}

/// What a subject workload allows.
#[derive(Default)]
struct Sides {
    ingress: Vec<Allowance>,
    egress: Vec<Allowance>,
}

/// The state of one proposal.
pub(super) struct Proposer<'g> {
    graph: &'g Graph,
    cluster: &'g ClusterView,
    options: &'g GenerateOptions,
    ends: Vec<End<'g>>,
    end_of: HashMap<&'g Party, usize>,
    /// Peer → its number.
    peers: BTreeMap<PeerSpec, usize>,
    /// Per subject workload: its end and what it allows.
    sides: Vec<(usize, Sides)>,
    notes: BTreeSet<Note>,
    judge: Judge,
    rare: Vec<Sighting>,
    left_out: Vec<LeftOut>,
    /// Per subject workload, the resolvers of its DNS edges.
    resolvers: BTreeMap<String, BTreeSet<String>>,
    /// The service map's edges, by their ends.
    map: HashMap<(usize, MapServer), MapSide>,
}

/// The server end of a service map's edge: the end, or for DNS to a
/// node-local resolver, that resolver at the end's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MapServer {
    End(usize),
    NodeLocalDns(usize),
}

/// Ports and weight of one service-map edge, merged from its sides.
type MergedSide = (BTreeSet<(Protocol, u16)>, u128);

/// The ends a service map draws, each once, by first appearance, and the
/// drawing of each proposer end (as itself, and as a node-local resolver).
struct Drawings {
    ends: Vec<map::End>,
    ids: HashMap<map::End, usize>,
    /// By proposer end: its drawing as itself and as a node-local resolver.
    by_end: Vec<[Option<usize>; 2]>,
}

impl Drawings {
    /// Room for `ends` proposer ends.
    fn new(ends: usize) -> Self {
        Self {
            ends: Vec::new(),
            ids: HashMap::new(),
            by_end: vec![[None; 2]; ends],
        }
    }

    /// The drawing id of a proposer end as `end` names it (itself, or as a
    /// node-local resolver), drawn by `draw` the first time.
    fn id(&mut self, end: MapServer, draw: impl FnOnce() -> map::End) -> usize {
        let (index, role) = match end {
            MapServer::End(index) => (index, 0),
            MapServer::NodeLocalDns(index) => (index, 1),
        };
        if let Some(id) = self.by_end[index][role] {
            return id;
        }
        let id = self.intern(draw());
        self.by_end[index][role] = Some(id);
        id
    }

    /// The id of `end`'s drawing.
    fn intern(&mut self, end: map::End) -> usize {
        let next = self.ends.len();
        *self.ids.entry(end).or_insert_with_key(|end| {
            self.ends.push(end.clone());
            next
        })
    }

    /// Each drawing's place in the drawings' order, by id.
    fn ranks(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.ends.len()).collect();
        order.sort_unstable_by(|&a, &b| self.ends[a].cmp(&self.ends[b]));
        let mut rank = vec![0; order.len()];
        for (place, id) in order.into_iter().enumerate() {
            rank[id] = place;
        }
        rank
    }

    /// The merged edges in map order ([`map::merged`]'s): kind, weight
    /// (largest first), then client and server by their drawings' ranks.
    fn edges(self, merged: HashMap<(map::EdgeKind, usize, usize), MergedSide>) -> Vec<MapEdge> {
        let rank = self.ranks();
        let mut edges: Vec<_> = merged.into_iter().collect();
        edges.sort_unstable_by_key(|&((kind, client, server), (_, weight))| {
            (kind, std::cmp::Reverse(weight), rank[client], rank[server])
        });
        edges
            .into_iter()
            .map(|((kind, client, server), (ports, weight))| MapEdge {
                client: self.ends[client].clone(),
                server: self.ends[server].clone(),
                ports: ports
                    .iter()
                    .map(|(protocol, port)| match protocol.name() {
                        Some(name) => format!("{name} {port}"),
                        None => format!("{protocol} {port}"),
                    })
                    .collect(),
                weight,
                kind,
            })
            .collect()
    }
}

/// What the service map draws between two ends.
#[derive(Default)]
struct MapSide {
    ports: BTreeSet<(Protocol, u16)>,
    bytes: u128,
    cross_tenant: bool,
}

impl<'g> Proposer<'g> {
    pub(super) fn new(
        graph: &'g Graph,
        cluster: &'g ClusterView,
        options: &'g GenerateOptions,
    ) -> Self {
        Self {
            graph,
            cluster,
            options,
            ends: Vec::new(),
            end_of: HashMap::new(),
            peers: BTreeMap::new(),
            sides: Vec::new(),
            notes: BTreeSet::new(),
            judge: Judge::new(graph, options.thresholds),
            rare: Vec::new(),
            left_out: Vec::new(),
            resolvers: BTreeMap::new(),
            map: HashMap::new(),
        }
    }

    /// Adds every edge, then makes the proposal.
    pub(super) fn propose(mut self) -> Proposal {
        for (key, stats) in self.graph.edges() {
            self.edge(key, stats);
        }
        self.finish()
    }

    /// The end `party` is, looked up once per party.
    fn end(&mut self, party: &'g Party) -> usize {
        if let Some(index) = self.end_of.get(party) {
            return *index;
        }
        let index = self.ends.len();
        let workload = party.workload();
        let view = workload.and_then(|workload| self.cluster.workload(workload));
        let host_network = view.is_some_and(|view| view.host_network);
        let excluded = workload.is_some_and(|workload| {
            self.options
                .excluded_namespaces
                .contains(&workload.namespace)
        });
        let tenantless = excluded
            || workload.is_some_and(|workload| {
                self.options
                    .platform_namespaces
                    .contains(&workload.namespace)
            });
        let tenant = workload.and_then(|workload| {
            view.and_then(|view| view.tenant.as_deref()).or_else(|| {
                self.graph
                    .workload(workload)
                    .and_then(|info| info.tenant.as_deref())
            })
        });
        let subject = workload
            .filter(|workload| workload.kind != "Service" && !excluded && !host_network)
            .map(|_| {
                self.sides.push((index, Sides::default()));
                self.sides.len() - 1
            });
        self.ends.push(End {
            party,
            subject,
            tenantless,
            tenant,
            host_network,
            as_peer: None,
            selection: None,
            text: None,
        });
        self.end_of.insert(party, index);
        index
    }

    /// Adds one edge: its notes, and what its ends allow.
    fn edge(&mut self, key: &'g EdgeKey, stats: &EdgeStats) {
        let EdgeKey {
            client,
            server,
            protocol,
            port,
        } = key;
        // Every namespace taking part gets a default deny (an end that is a
        // subject), even when none of its edges can be allowed: what it will
        // block is in the review.
        let (client_end, server_end) = (self.end(client), self.end(server));
        let verdict = self.judge.verdict(stats);
        if let Verdict::LeftOut(too_few, too_old) = verdict {
            let sighting = self.sighting(key, stats, client_end, server_end);
            self.left_out.push(LeftOut {
                sighting,
                too_few,
                too_old,
            });
            return;
        }
        let Some(cross_tenant) = self.admits(key, stats, client_end, server_end) else {
            return;
        };
        if verdict == Verdict::Rare {
            let sighting = self.sighting(key, stats, client_end, server_end);
            self.rare.push(sighting);
        }
        let dns = [(Protocol(6), 53), (Protocol(17), 53)];
        let single = [(*protocol, *port)];
        let ports: &[(Protocol, u16)] = if is_dns(key) { &dns } else { &single };
        // What each end looks like as the other's peer; a node-local
        // resolver is its address.
        let client_peer = self.as_peer(client_end, key);
        let (server_peers, map_server) = match self.resolver(key, client_end) {
            Some(peers) => (peers, MapServer::NodeLocalDns(server_end)),
            None => (
                self.as_peer(server_end, key).into_iter().collect(),
                MapServer::End(server_end),
            ),
        };
        let mut allowed = false;
        if let Some(side) = self.ends[client_end].subject
            && self.named(key, stats)
        {
            // In the Cilium format, an address with names is allowed by
            // its names (patterns are chosen once all names are in).
            allowed = true;
            for name in &stats.names {
                let peer = self.intern(PeerSpec::Fqdn(FqdnSelector::MatchName(name.clone())));
                let egress = &mut self.sides[side].1.egress;
                egress.extend(
                    ports
                        .iter()
                        .map(|(protocol, port)| (peer, *protocol, *port)),
                );
            }
        } else if let Some(side) = self.ends[client_end].subject {
            allowed |= !server_peers.is_empty();
            let egress = &mut self.sides[side].1.egress;
            for peer in server_peers {
                egress.extend(
                    ports
                        .iter()
                        .map(|(protocol, port)| (peer, *protocol, *port)),
                );
            }
        }
        if let (Some(side), Some(peer)) = (self.ends[server_end].subject, client_peer) {
            allowed = true;
            let ingress = &mut self.sides[side].1.ingress;
            ingress.extend(
                ports
                    .iter()
                    .map(|(protocol, port)| (peer, *protocol, *port)),
            );
        }
        if allowed {
            let side = self.map.entry((client_end, map_server)).or_default();
            side.ports.extend(ports.iter().copied());
            side.bytes = side.bytes.saturating_add(u128::from(stats.bytes));
            side.cross_tenant |= cross_tenant;
        }
    }

    /// The service map's edges, in map order: what [`map::merged`] gives
    /// for them, worked out on interned ends. Each end is drawn once, and
    /// edges are merged and sorted by integers (an end's rank in drawing
    /// order) rather than by the drawings' strings.
    fn map_edges(&mut self, named: &[NamedAddress]) -> Vec<MapEdge> {
        let map = std::mem::take(&mut self.map);
        let mut drawings = Drawings::new(self.ends.len());
        let mut merged: HashMap<(map::EdgeKind, usize, usize), MergedSide> = HashMap::new();
        for ((client, server), side) in map {
            let client = drawings.id(MapServer::End(client), || self.map_end(client, named));
            let server = drawings.id(server, || match server {
                MapServer::End(end) => self.map_end(end, named),
                MapServer::NodeLocalDns(end) => map::End::Outside {
                    label: format!("node-local DNS {}", address_text(self.ends[end].party)),
                    kind: map::OutsideKind::NodeLocalDns,
                },
            });
            let kind = if side.cross_tenant {
                map::EdgeKind::CrossTenant
            } else {
                map::EdgeKind::Allowed
            };
            let (ports, weight) = merged.entry((kind, client, server)).or_default();
            ports.extend(side.ports);
            *weight = weight.saturating_add(side.bytes);
        }
        drawings.edges(merged)
    }

    /// An end as a service map draws it: a workload, or an address with
    /// the names workloads resolved to it.
    fn map_end(&self, end: usize, named: &[NamedAddress]) -> map::End {
        match self.ends[end].party {
            Party::Workload(workload) => map::End::Workload(workload.clone()),
            party @ Party::Address { ip, .. } => {
                let names = named
                    .binary_search_by(|address| address.address.cmp(ip))
                    .ok()
                    .map(|index| &named[index].names);
                let label = match names.map(|names| (names.first(), names.len())) {
                    Some((Some(first), 1)) => format!("{first} ({ip})"),
                    Some((Some(first), count)) => format!("{first} +{} ({ip})", count - 1),
                    _ => party.to_string(),
                };
                map::End::Outside {
                    label,
                    kind: map::OutsideKind::Address,
                }
            }
        }
    }

    /// For a DNS edge, notes its resolver for the client's review, and
    /// gives the peers of a node-local one (None: the server's own peer).
    fn resolver(&mut self, key: &EdgeKey, client: usize) -> Option<Vec<usize>> {
        if !is_dns(key) {
            return None;
        }
        let resolver = Resolver::of(&key.server, self.cluster, &self.options.node_local_dns);
        if self.ends[client].subject.is_some() {
            let client = self.end_text(client).to_string();
            let text = resolver.text(&key.server);
            self.resolvers.entry(client).or_default().insert(text);
        }
        let peers = resolver.peers()?;
        Some(peers.into_iter().map(|peer| self.intern(peer)).collect())
    }

    /// Whether an edge's server is allowed by its names: the Cilium
    /// format, an address outside the cluster, and names seen for it.
    fn named(&self, key: &EdgeKey, stats: &EdgeStats) -> bool {
        self.options.format == PolicyFormat::Cilium
            && matches!(
                key.server,
                Party::Address {
                    kind: PeerKind::World,
                    ..
                }
            )
            && !stats.names.is_empty()
    }

    /// Replaces, per workload, the names that share a pattern by the
    /// pattern ([`super::fqdn::selectors`]).
    fn fold_names(&mut self) {
        let mut by_number: Vec<Option<&str>> = vec![None; self.peers.len()];
        for (peer, number) in &self.peers {
            if let PeerSpec::Fqdn(FqdnSelector::MatchName(name)) = peer {
                by_number[*number] = Some(name.as_str());
            }
        }
        let by_number: Vec<Option<String>> = by_number
            .into_iter()
            .map(|name| name.map(str::to_owned))
            .collect();
        let mut sides = std::mem::take(&mut self.sides);
        for (_, Sides { egress, .. }) in &mut sides {
            let names: BTreeSet<&str> = egress
                .iter()
                .filter_map(|(peer, _, _)| by_number[*peer].as_deref())
                .collect();
            if names.is_empty() {
                continue;
            }
            let chosen = super::fqdn::selectors(&names, self.options.fqdn_pattern_threshold);
            for (peer, _, _) in egress.iter_mut() {
                let Some(name) = by_number[*peer].as_deref() else {
                    continue;
                };
                if let Some(selector @ FqdnSelector::MatchPattern(_)) = chosen.get(name) {
                    *peer = self.intern(PeerSpec::Fqdn(selector.clone()));
                }
            }
        }
        self.sides = sides;
    }

    /// How often and lately the edge between two ends was seen.
    fn sighting(
        &mut self,
        key: &EdgeKey,
        stats: &EdgeStats,
        client: usize,
        server: usize,
    ) -> Sighting {
        let ends = (self.end_text(client), self.end_text(server));
        self.judge.sighting(ends, (key.protocol, key.port), stats)
    }

    /// The end's name, made once and shared.
    fn end_text(&mut self, end: usize) -> Arc<str> {
        let end = &mut self.ends[end];
        end.text
            .get_or_insert_with(|| Arc::from(end.party.to_string()))
            .clone()
    }

    /// Whether an edge can be allowed at all; notes why not, and what a
    /// reviewer should know about it.
    /// `None` when it cannot; else whether it crosses tenants.
    fn admits(
        &mut self,
        key: &EdgeKey,
        stats: &EdgeStats,
        client: usize,
        server: usize,
    ) -> Option<bool> {
        let EdgeKey { protocol, port, .. } = key;
        if !matches!(protocol.name(), Some("TCP" | "UDP" | "SCTP")) || *port == 0 {
            self.notes.insert(Note::Unexpressible(format!(
                "{}: NetworkPolicy allows {} only together with every other protocol",
                edge_text(key),
                protocol
            )));
            return None;
        }
        let (client, server) = (&self.ends[client], &self.ends[server]);
        let crossing = !client.tenantless
            && !server.tenantless
            && (stats.cross_tenant
                || matches!((client.tenant, server.tenant), (Some(a), Some(b)) if a != b));
        if crossing {
            if !self.options.allow_cross_tenant {
                self.notes.insert(Note::CrossTenantExcluded(edge_text(key)));
                return None;
            }
            self.notes.insert(Note::CrossTenantIncluded(edge_text(key)));
        }
        if client.party.workload().is_none() || server.party.workload().is_none() {
            self.notes.insert(Note::External(edge_text(key)));
        }
        Some(crossing)
    }

    /// The end as the other end's peer, with the note its edge gets when it
    /// cannot be one (or needs a word).
    fn as_peer(&mut self, end: usize, key: &EdgeKey) -> Option<usize> {
        let as_peer = match self.ends[end].as_peer {
            Some(as_peer) => as_peer,
            None => {
                let as_peer = self.work_out_peer(end);
                self.ends[end].as_peer = Some(as_peer);
                as_peer
            }
        };
        if let Some(note) = as_peer.note {
            let text = match note {
                EndNote::RemoteNode => format!(
                    "{}: a node's address; Cilium matches it by toCIDR/fromCIDR only with policy-cidr-match-mode=nodes (otherwise allow the remote-node entity by hand, which admits every node)",
                    edge_text(key)
                ),
                EndNote::Service => format!(
                    "{}: the Service's backends were not told apart; allow its pods by hand",
                    edge_text(key)
                ),
                EndNote::HostNetwork => format!(
                    "{}: {} uses the node's network; NetworkPolicy cannot select it",
                    edge_text(key),
                    self.ends[end].party
                ),
            };
            self.notes.insert(Note::Unselectable(text));
        }
        as_peer.peer
    }

    fn work_out_peer(&mut self, end: usize) -> AsPeer {
        let End {
            party,
            host_network,
            ..
        } = self.ends[end];
        let (peer, note) = match party {
            Party::Address { ip, kind } => {
                let entity = |entity: &str| PeerSpec::Entity {
                    entity: entity.to_owned(),
                    cidr: cidr(*ip),
                };
                match kind {
                    PeerKind::KubeApiserver => (Some(entity("kube-apiserver")), None),
                    PeerKind::Host => (Some(entity("host")), None),
                    PeerKind::RemoteNode if self.options.format == PolicyFormat::Cilium => {
                        (Some(PeerSpec::Cidr(cidr(*ip))), Some(EndNote::RemoteNode))
                    }
                    _ => (Some(PeerSpec::Cidr(cidr(*ip))), None),
                }
            }
            Party::Workload(workload) if workload.kind == "Service" => {
                (None, Some(EndNote::Service))
            }
            Party::Workload(_) if host_network => (None, Some(EndNote::HostNetwork)),
            Party::Workload(workload) => (
                self.select(end, workload).map(|labels| PeerSpec::Pods {
                    namespace: Arc::from(workload.namespace.as_str()),
                    labels,
                }),
                None,
            ),
        };
        AsPeer {
            peer: peer.map(|peer| self.intern(peer)),
            note,
        }
    }

    /// The workload's selector, kept for its policy; notes a workload
    /// without labels, or whose labels also select others.
    fn select(
        &mut self,
        end: usize,
        workload: &WorkloadRef,
    ) -> Option<Arc<BTreeMap<String, String>>> {
        let Some(selection) = self.cluster.selector(workload) else {
            self.notes.insert(Note::Unselectable(format!(
                "{workload}: no labels to select its pods by"
            )));
            return None;
        };
        if !selection.also_selects.is_empty() {
            let others: Vec<String> = selection
                .also_selects
                .iter()
                .map(ToString::to_string)
                .collect();
            self.notes.insert(Note::Overlap(format!(
                "{workload}: its labels also select {}",
                others.join(", ")
            )));
        }
        let labels = Arc::new(selection.labels.clone());
        self.ends[end].selection = Some(selection);
        Some(labels)
    }

    /// The peer's number; the same peer (two workloads with the same
    /// selector) gets the same one.
    fn intern(&mut self, peer: PeerSpec) -> usize {
        let next = self.peers.len();
        *self.peers.entry(peer).or_insert(next)
    }

    /// Policies, notes and allowed lines, sorted.
    fn finish(mut self) -> Proposal {
        self.fold_names();
        let (peers, rank) = ranked(std::mem::take(&mut self.peers));
        let texts: Vec<String> = peers.iter().map(peer_text).collect();
        let mut sides = std::mem::take(&mut self.sides);
        sides.retain(|(_, sides)| !sides.ingress.is_empty() || !sides.egress.is_empty());
        sides.sort_by(|(a, _), (b, _)| self.ends[*a].party.cmp(self.ends[*b].party));
        let mut policies = Vec::with_capacity(sides.len());
        let mut line_groups = Vec::with_capacity(sides.len());
        for (end, Sides { ingress, egress }) in sides {
            let End {
                party, selection, ..
            } = &mut self.ends[end];
            let (Party::Workload(workload), Some(selection)) = (*party, selection.take()) else {
                continue;
            };
            let ingress = ranked_allowances(ingress, &rank);
            let egress = ranked_allowances(egress, &rank);
            line_groups.push(allowed_lines(workload, &ingress, &egress, &texts));
            policies.push(WorkloadPolicy {
                workload: workload.clone(),
                name: policy_name(workload),
                selection,
                ingress: rules(&ingress, &peers),
                egress: rules(&egress, &peers),
            });
        }
        self.rare.sort_unstable();
        self.left_out.sort_unstable();
        let named_addresses = super::named_addresses(self.graph);
        let map = self.map_edges(&named_addresses);
        let names_without_dns = super::names_without_dns(self.graph, &policies, &self.resolvers);
        Proposal {
            names_without_dns,
            namespaces: self.namespaces(),
            policies,
            notes: self.notes.into_iter().collect(),
            allowed: sorted_lines(line_groups),
            edges: self.graph.len(),
            rare: self.rare,
            left_out: self.left_out,
            thresholds: self.options.thresholds,
            resolvers: self.resolvers,
            named_addresses,
            map,
        }
    }

    /// The namespaces of subject workloads: each gets a default deny.
    fn namespaces(&self) -> Vec<String> {
        let namespaces: BTreeSet<&String> = self
            .ends
            .iter()
            .filter(|end| end.subject.is_some())
            .filter_map(|end| end.party.workload())
            .map(|workload| &workload.namespace)
            .collect();
        namespaces.into_iter().cloned().collect()
    }
}

/// An address end's address; another end as it is written.
fn address_text(party: &Party) -> String {
    match party {
        Party::Address { ip, .. } => ip.to_string(),
        Party::Workload(workload) => workload.to_string(),
    }
}

/// Peers in [`PeerSpec`] order, and each peer number's rank in it.
fn ranked(peers: BTreeMap<PeerSpec, usize>) -> (Vec<PeerSpec>, Vec<usize>) {
    let mut rank = vec![0; peers.len()];
    let peers = peers
        .into_iter()
        .enumerate()
        .map(|(place, (peer, number))| {
            rank[number] = place;
            peer
        })
        .collect();
    (peers, rank)
}

/// Allowances by peer rank, then protocol and port, once each.
fn ranked_allowances(mut allowances: Vec<Allowance>, rank: &[usize]) -> Vec<Allowance> {
    for (peer, _, _) in &mut allowances {
        *peer = rank[*peer];
    }
    allowances.sort_unstable();
    allowances.dedup();
    allowances
}

/// Peers with their ports as rules: peers with the same port set share a
/// rule, so a rule allows exactly the product of its peers and ports. In
/// [`RuleSpec`] order: a peer is in one rule only, so rules compare by their
/// first peer.
fn rules(allowances: &[Allowance], peers: &[PeerSpec]) -> Vec<RuleSpec> {
    // One run per peer, in rank order; grouped by their ports (the stable
    // sort keeps each group's peers in rank order).
    let mut runs: Vec<&[Allowance]> = allowances.chunk_by(|a, b| a.0 == b.0).collect();
    runs.sort_by(|a, b| ports(a).cmp(ports(b)));
    let mut groups: Vec<&[&[Allowance]]> = runs.chunk_by(|a, b| ports(a).eq(ports(b))).collect();
    groups.sort_unstable_by_key(|group| group[0][0].0);
    groups
        .into_iter()
        .map(|group| RuleSpec {
            peers: group.iter().map(|run| peers[run[0].0].clone()).collect(),
            ports: port_ranges(ports(group[0])),
        })
        .collect()
}

/// The ports of one peer's run of allowances.
fn ports(run: &[Allowance]) -> impl Iterator<Item = (Protocol, u16)> + '_ {
    run.iter().map(|(_, protocol, port)| (*protocol, *port))
}

/// A workload's allowed lines (`<workload> <direction> <peer>
/// <protocol>/<port>`), sorted, and what all of them start with.
fn allowed_lines(
    workload: &WorkloadRef,
    ingress: &[Allowance],
    egress: &[Allowance],
    texts: &[String],
) -> (String, Vec<String>) {
    let prefix = format!("{workload} ");
    let mut lines = Vec::with_capacity(ingress.len() + egress.len());
    for (direction, allowances) in [("ingress from ", ingress), ("egress to ", egress)] {
        for (peer, protocol, port) in allowances {
            let text = &texts[*peer];
            // Room for the longest end, ` SCTP/65535`.
            let mut line = String::with_capacity(prefix.len() + direction.len() + text.len() + 12);
            line.push_str(&prefix);
            line.push_str(direction);
            line.push_str(text);
            line.push(' ');
            match protocol.name() {
                Some(name) => line.push_str(name),
                None => line.push_str(&protocol.to_string()),
            }
            line.push('/');
            push_decimal(&mut line, *port);
            lines.push(line);
        }
    }
    lines.sort_unstable();
    (prefix, lines)
}

/// Every workload's lines in one sorted list. Workload names have no
/// spaces, so the lines of one workload sort together, in the order of their
/// `<workload> ` prefixes: put together that way the list is sorted, and the
/// final sort, there for names that break the rule, is one pass that finds
/// it so.
fn sorted_lines(mut groups: Vec<(String, Vec<String>)>) -> Vec<String> {
    groups.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    let mut lines = Vec::with_capacity(groups.iter().map(|(_, lines)| lines.len()).sum());
    for (_, group) in groups {
        lines.extend(group);
    }
    lines.sort();
    lines
}
