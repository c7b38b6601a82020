//! One DNS message, read from the bytes the datapath copied.
//!
//! The bytes come from any pod and any server, so nothing in them is trusted:
//! hickory-proto checks every length and count against the buffer, and refuses
//! compression pointers that do not point strictly backwards (so a pointer
//! loop is an error, not a hang). On top of that, an answer counts only when
//! it belongs to the question asked: its owner is a question's name, or the
//! target of a CNAME chain that starts at one. Anything else in the answer
//! section (a name nobody asked for) is counted in
//! [`DnsMessage::unsolicited`] and ignored, so a server cannot attach names
//! to addresses the client never looked up.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode},
    rr::{Name, RData, Record},
    serialize::binary::DecodeError,
};

/// Why bytes are not a DNS message we can use.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Truncated, a length or count past the end, a bad label or a
    /// compression pointer that does not point backwards.
    #[error("malformed DNS message: {0}")]
    Malformed(#[from] DecodeError),
    /// An update, notify or other operation: it resolves nothing.
    #[error("DNS message with opcode {0}, not a query")]
    NotQuery(u8),
}

/// Whether the message asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// QR = 0.
    Query,
    /// QR = 1.
    Response,
}

/// A question: the name asked for and the record type wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower-case ASCII (IDNA labels stay in their `xn--` form), without the
    /// final dot: `myvault.vault.azure.net`.
    pub name: String,
    /// QTYPE: 1 for A, 28 for AAAA.
    pub qtype: u16,
}

/// An address a response resolves, and every name on the chain that led to
/// it: the question's name first, then each CNAME target in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// From an A or AAAA record.
    pub address: IpAddr,
    /// The smallest TTL on the chain (seconds): the mapping holds only while
    /// every link of it does.
    pub ttl: u32,
    /// Question name first, then CNAME targets; no duplicates.
    pub names: Vec<String>,
}

/// A DNS query or response, reduced to what flows and Hubble's L7 DNS
/// records need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// Query or response.
    pub kind: Kind,
    /// RCODE (0 NOERROR, 3 NXDOMAIN, ...).
    pub rcode: u16,
    /// The question section.
    pub questions: Vec<Question>,
    /// Addresses the answers resolve the questions to, in answer order, one
    /// entry per address.
    pub resolved: Vec<Resolved>,
    /// CNAME targets on a question's chain, in the order they were found.
    pub cnames: Vec<String>,
    /// The type of every answer record, in order.
    pub rrtypes: Vec<u16>,
    /// Answer records whose owner is on no question's chain: ignored.
    pub unsolicited: usize,
    /// Names not attached to an address that already had
    /// [`MAX_NAMES_PER_ADDRESS`] from this message.
    pub dropped_names: usize,
}

impl DnsMessage {
    /// Reads a message from the bytes of a UDP payload (or of a TCP message
    /// without its two-byte length prefix).
    ///
    /// # Errors
    /// [`ReadError`] when the bytes are not a complete, well-formed message
    /// or not a query/response.
    pub fn read(bytes: &[u8]) -> Result<Self, ReadError> {
        let message = Message::from_vec(bytes)?;
        let metadata = &message.metadata;
        if metadata.op_code != OpCode::Query {
            return Err(ReadError::NotQuery(u8::from(metadata.op_code)));
        }
        let questions: Vec<Question> = message
            .queries
            .iter()
            .map(|query| Question {
                name: text(&query.name),
                qtype: u16::from(query.query_type),
            })
            .collect();
        let kind = match metadata.message_type {
            MessageType::Query => Kind::Query,
            MessageType::Response => Kind::Response,
        };
        let chains = Chains::follow(&questions, &message.answers);
        let (resolved, unsolicited, dropped_names) = chains.resolve(&message.answers);
        Ok(Self {
            id: metadata.id,
            kind,
            rcode: u16::from(metadata.response_code),
            rrtypes: message
                .answers
                .iter()
                .map(|record| u16::from(record.record_type()))
                .collect(),
            cnames: chains.targets,
            questions,
            resolved,
            unsolicited,
            dropped_names,
        })
    }
}

/// The longest CNAME chain followed, question name included. Resolvers give
/// up well before (8 to 16 links); answers past the cut count as unsolicited.
pub const MAX_CHAIN: usize = 16;

/// The most names one address takes from one message; the rest are counted in
/// [`DnsMessage::dropped_names`].
pub const MAX_NAMES_PER_ADDRESS: usize = 64;

/// The names reachable from the questions through CNAME records.
struct Chains {
    /// Each reachable name, with the smallest TTL on its way and the names
    /// from its question to it.
    reached: BTreeMap<String, Link>,
    /// CNAME targets in the order they were reached.
    targets: Vec<String>,
}

struct Link {
    ttl: u32,
    path: Vec<String>,
}

impl Chains {
    /// Follows CNAMEs from the questions' names, breadth first. A name is
    /// reached once and a path stops at [`MAX_CHAIN`] names, so a loop or a
    /// chain as long as the message allows costs time and memory linear in
    /// the answers.
    fn follow(questions: &[Question], answers: &[Record]) -> Self {
        let mut by_owner: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        for record in answers {
            if let RData::CNAME(target) = &record.data {
                let links = by_owner.entry(text(&record.name)).or_default();
                links.push((text(&target.0), record.ttl));
            }
        }
        let mut reached = BTreeMap::new();
        let mut queue = VecDeque::new();
        for question in questions {
            let link = Link {
                ttl: u32::MAX,
                path: vec![question.name.clone()],
            };
            if reached.insert(question.name.clone(), link).is_none() {
                queue.push_back(question.name.clone());
            }
        }
        let mut targets = Vec::new();
        while let Some(owner) = queue.pop_front() {
            let (Some(links), Some(from)) = (by_owner.remove(&owner), reached.get(&owner)) else {
                continue;
            };
            if from.path.len() >= MAX_CHAIN {
                continue;
            }
            let (ttl, path) = (from.ttl, from.path.clone());
            for (target, link_ttl) in links {
                if reached.contains_key(&target) {
                    continue;
                }
                let mut path = path.clone();
                path.push(target.clone());
                let link = Link {
                    ttl: ttl.min(link_ttl),
                    path,
                };
                reached.insert(target.clone(), link);
                targets.push(target.clone());
                queue.push_back(target);
            }
        }
        Self { reached, targets }
    }

    /// The addresses of the A and AAAA answers on a chain; the number of
    /// answers off every chain; the names dropped past
    /// [`MAX_NAMES_PER_ADDRESS`].
    fn resolve(&self, answers: &[Record]) -> (Vec<Resolved>, usize, usize) {
        let mut resolved: Vec<Resolved> = Vec::new();
        let mut index: HashMap<IpAddr, usize> = HashMap::new();
        let mut unsolicited = 0;
        let mut dropped = 0;
        for record in answers {
            let owner = text(&record.name);
            let Some(link) = self.reached.get(&owner) else {
                unsolicited += 1;
                continue;
            };
            let address = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            let ttl = link.ttl.min(record.ttl);
            let Some(&at) = index.get(&address) else {
                index.insert(address, resolved.len());
                resolved.push(Resolved {
                    address,
                    ttl,
                    names: link.path.clone(),
                });
                continue;
            };
            let known = &mut resolved[at];
            known.ttl = known.ttl.max(ttl);
            for name in &link.path {
                if known.names.contains(name) {
                    continue;
                }
                if known.names.len() >= MAX_NAMES_PER_ADDRESS {
                    dropped += 1;
                } else {
                    known.names.push(name.clone());
                }
            }
        }
        (resolved, unsolicited, dropped)
    }
}

/// A name as flows show it: lower case, no final dot.
fn text(name: &Name) -> String {
    let mut ascii = name.to_lowercase().to_ascii();
    if ascii.len() > 1 && ascii.ends_with('.') {
        ascii.pop();
    }
    ascii
}

#[cfg(test)]
mod tests;
