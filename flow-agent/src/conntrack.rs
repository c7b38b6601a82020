//! Where a connection to a Service address really went: a conntrack lookup
//! (ctnetlink, `IPCTNL_MSG_CT_GET`) of the original tuple returns the reply
//! tuple, whose source is the backend that kube-proxy's DNAT chose.
//!
//! The classifiers see a client's packets before DNAT (at the client's
//! host-side interface) and the backend's replies before un-NAT, so without
//! this a request to `10.96.0.20:80` and its reply from `10.1.0.30:8080` look
//! like two unrelated flows. Needs CAP_NET_ADMIN in the node's network
//! namespace and conntrack (Linux 2.6.14+, always there with kube-proxy).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use flow_model::record::Protocol;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// How long a lookup waits for its answer; past it the lookup fails with
/// `WouldBlock`.
pub const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// One direction of a connection as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
}

fn attribute(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = 4 + value.len();
    buffer.extend_from_slice(&(length as u16).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(value);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

fn nested(buffer: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    build(buffer);
    let length = (buffer.len() - start) as u16;
    buffer[start..start + 2].copy_from_slice(&length.to_ne_bytes());
    buffer[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn encode_tuple(buffer: &mut Vec<u8>, kind: u16, tuple: &Tuple) {
    let Tuple {
        src,
        src_port,
        dst,
        dst_port,
        protocol: Protocol(protocol),
    } = *tuple;
    nested(buffer, kind, |buffer| {
        nested(buffer, CTA_TUPLE_IP, |buffer| match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                attribute(buffer, CTA_IP_V4_SRC, &src.octets());
                attribute(buffer, CTA_IP_V4_DST, &dst.octets());
            }
            (src, dst) => {
                attribute(buffer, CTA_IP_V6_SRC, &to_v6(src));
                attribute(buffer, CTA_IP_V6_DST, &to_v6(dst));
            }
        });
        nested(buffer, CTA_TUPLE_PROTO, |buffer| {
            attribute(buffer, CTA_PROTO_NUM, &[protocol]);
            attribute(buffer, CTA_PROTO_SRC_PORT, &src_port.to_be_bytes());
            attribute(buffer, CTA_PROTO_DST_PORT, &dst_port.to_be_bytes());
        });
    });
}

fn to_v6(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The `IPCTNL_MSG_CT_GET` request for an original tuple.
fn request(tuple: &Tuple, sequence: u32) -> Vec<u8> {
    let mut message = vec![0u8; 16];
    let family = if tuple.src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // nfgenmsg: family, version 0, resource id 0.
    message.extend_from_slice(&[family as u8, 0, 0, 0]);
    encode_tuple(&mut message, CTA_TUPLE_ORIG, tuple);
    let length = message.len() as u32;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message[4..6]
        .copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    message[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message[8..12].copy_from_slice(&sequence.to_ne_bytes());
    message
}

/// Walks netlink attributes: (type without flags, payload).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let payload = &bytes[4..length];
        bytes = bytes.get(length.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

fn find(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes)
        .find(|(found, _)| *found == kind)
        .map(|(_, payload)| payload)
}

/// The source address and port of the tuple in attribute `kind` of a reply.
fn tuple_source(attributes: &[u8], kind: u16) -> Option<(IpAddr, u16)> {
    let tuple = find(attributes, kind)?;
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let address = if let Some(v4) = find(ip, CTA_IP_V4_SRC) {
        IpAddr::from(<[u8; 4]>::try_from(v4).ok()?)
    } else {
        IpAddr::from(<[u8; 16]>::try_from(find(ip, CTA_IP_V6_SRC)?).ok()?)
    };
    let port = find(find(tuple, CTA_TUPLE_PROTO)?, CTA_PROTO_SRC_PORT)?;
    Some((address, u16::from_be_bytes(<[u8; 2]>::try_from(port).ok()?)))
}

/// Parses the answer to a GET: the reply tuple's source, `None` when conntrack
/// has no such connection. Never panics: a message too short for its
/// header is [`io::ErrorKind::InvalidData`], a tuple missing a part is `None`.
pub fn parse_answer(message: &[u8]) -> io::Result<Option<(IpAddr, u16)>> {
    if message.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink message",
        ));
    }
    let kind = u16::from_ne_bytes([message[4], message[5]]);
    if kind == NLMSG_ERROR {
        let errno = message
            .get(16..20)
            .map(|bytes| i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .unwrap_or(-libc::EIO);
        // An errno is negative; i32::MIN has no positive counterpart.
        return match errno.checked_neg() {
            Some(0 | libc::ENOENT) => Ok(None),
            Some(errno) if errno > 0 => Err(io::Error::from_raw_os_error(errno)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink error {errno} is no errno"),
            )),
        };
    }
    let length = (u32::from_ne_bytes([message[0], message[1], message[2], message[3]]) as usize)
        .min(message.len());
    // Header (16) and nfgenmsg (4), then attributes.
    Ok(message
        .get(20..length)
        .and_then(|attributes| tuple_source(attributes, CTA_TUPLE_REPLY)))
}

/// A ctnetlink socket for lookups.
#[derive(Debug)]
pub struct Conntrack {
    socket: OwnedFd,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Conntrack {
    /// Opens a ctnetlink socket in the current network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket creation; ownership is taken below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self::with_socket(socket))
    }

    /// Looks up through `socket` (ctnetlink, or in tests anything that takes
    /// datagrams), waiting at most [`LOOKUP_TIMEOUT`] for each answer.
    pub(crate) fn with_socket(socket: OwnedFd) -> Self {
        // A lookup is a local kernel call; never wait long for it.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: LOOKUP_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt reads a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Self {
            socket,
            sequence: 0,
            buffer: vec![0; 8192],
        }
    }

    /// The source of the reply direction of the connection whose original
    /// direction is `original`: for a DNATed connection, the real backend.
    pub fn reply_source(&mut self, original: &Tuple) -> io::Result<Option<(IpAddr, u16)>> {
        self.sequence = self.sequence.wrapping_add(1);
        let request = request(original, self.sequence);
        // SAFETY: `request` is valid for reads of its length.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    0,
                )
            };
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            let message = &self.buffer[..received as usize];
            let sequence = message
                .get(8..12)
                .map(|bytes| u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
            // Skip answers to earlier requests that timed out.
            if sequence == Some(self.sequence) {
                return parse_answer(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `ctnetlink` fuzz target: an error message carrying
    /// i32::MIN overflowed its negation.
    #[test]
    fn an_error_message_with_errno_i32_min_is_invalid_data() {
        let mut message = vec![0_u8; 20];
        message[..4].copy_from_slice(&20_u32.to_ne_bytes());
        message[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        message[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        let error = parse_answer(&message).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        message[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(parse_answer(&message).unwrap().is_none());
        message[16..20].copy_from_slice(&5_i32.to_ne_bytes());
        assert_eq!(
            parse_answer(&message).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    fn tuple() -> Tuple {
        Tuple {
            src: "10.1.0.2".parse().unwrap(),
            src_port: 40000,
            dst: "10.96.0.20".parse().unwrap(),
            dst_port: 80,
            protocol: Protocol(flow_common::protocol::TCP),
        }
    }

    #[test]
    fn request_encodes_the_original_tuple() {
        let message = request(&tuple(), 7);
        assert_eq!(
            u32::from_ne_bytes(message[0..4].try_into().unwrap()) as usize,
            message.len()
        );
        assert_eq!(u16::from_ne_bytes([message[4], message[5]]), 0x0101);
        assert_eq!(message[16], libc::AF_INET as u8);
        let orig = find(&message[20..], CTA_TUPLE_ORIG).unwrap();
        let ip = find(orig, CTA_TUPLE_IP).unwrap();
        assert_eq!(find(ip, CTA_IP_V4_DST).unwrap(), [10, 96, 0, 20]);
        let proto = find(orig, CTA_TUPLE_PROTO).unwrap();
        assert_eq!(find(proto, CTA_PROTO_NUM).unwrap(), [6]);
        assert_eq!(
            find(proto, CTA_PROTO_DST_PORT).unwrap(),
            80u16.to_be_bytes()
        );
    }

    #[test]
    fn ipv6_tuples_go_as_sixteen_byte_addresses_of_family_inet6() {
        let original = Tuple {
            src: "fd00:1::2".parse().unwrap(),
            src_port: 40000,
            dst: "fd00:96::20".parse().unwrap(),
            dst_port: 53,
            protocol: Protocol(flow_common::protocol::UDP),
        };
        let message = request(&original, 9);
        assert_eq!(message[16], libc::AF_INET6 as u8);
        let orig = find(&message[20..], CTA_TUPLE_ORIG).unwrap();
        let ip = find(orig, CTA_TUPLE_IP).unwrap();
        let destination: std::net::Ipv6Addr = "fd00:96::20".parse().unwrap();
        assert_eq!(find(ip, CTA_IP_V6_DST).unwrap(), destination.octets());
        assert!(find(ip, CTA_IP_V4_DST).is_none());
        let proto = find(orig, CTA_TUPLE_PROTO).unwrap();
        assert_eq!(find(proto, CTA_PROTO_NUM).unwrap(), [17]);
        assert_eq!(
            find(proto, CTA_PROTO_SRC_PORT).unwrap(),
            40000u16.to_be_bytes()
        );

        // The answer's reply tuple, written byte by byte as the kernel does
        // (not with this module's encoder): CTA_TUPLE_REPLY { CTA_TUPLE_IP
        // { CTA_IP_V6_SRC, CTA_IP_V6_DST }, CTA_TUPLE_PROTO { NUM, SRC, DST } }.
        let nested = |kind: u16, payload: &[u8]| {
            let mut out = Vec::new();
            out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            out.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
            out.extend_from_slice(payload);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out
        };
        let leaf = |kind: u16, payload: &[u8]| {
            let mut out = nested(kind, payload);
            out[2..4].copy_from_slice(&kind.to_ne_bytes());
            out
        };
        let backend: std::net::Ipv6Addr = "fd00:2::2".parse().unwrap();
        let client: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
        let ip = [
            leaf(CTA_IP_V6_SRC, &backend.octets()),
            leaf(CTA_IP_V6_DST, &client.octets()),
        ]
        .concat();
        let proto = [
            leaf(CTA_PROTO_NUM, &[17]),
            leaf(CTA_PROTO_SRC_PORT, &5353u16.to_be_bytes()),
            leaf(CTA_PROTO_DST_PORT, &40000u16.to_be_bytes()),
        ]
        .concat();
        let reply = nested(
            CTA_TUPLE_REPLY,
            &[nested(CTA_TUPLE_IP, &ip), nested(CTA_TUPLE_PROTO, &proto)].concat(),
        );
        let mut answer = vec![0u8; 16];
        answer.extend_from_slice(&[libc::AF_INET6 as u8, 0, 0, 0]);
        answer.extend_from_slice(&reply);
        let length = answer.len() as u32;
        answer[0..4].copy_from_slice(&length.to_ne_bytes());
        assert_eq!(
            parse_answer(&answer).unwrap(),
            Some((IpAddr::V6(backend), 5353))
        );
    }

    #[test]
    fn answer_yields_the_reply_source_and_errors_are_absence_or_errors() {
        // Build an answer the way the kernel does: header, nfgenmsg, tuples.
        let backend = Tuple {
            src: "10.1.0.30".parse().unwrap(),
            src_port: 8080,
            dst: "10.1.0.2".parse().unwrap(),
            dst_port: 40000,
            protocol: Protocol(flow_common::protocol::TCP),
        };
        let mut message = vec![0u8; 16];
        message.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        encode_tuple(&mut message, CTA_TUPLE_ORIG, &tuple());
        encode_tuple(&mut message, CTA_TUPLE_REPLY, &backend);
        let length = message.len() as u32;
        message[0..4].copy_from_slice(&length.to_ne_bytes());
        assert_eq!(
            parse_answer(&message).unwrap(),
            Some(("10.1.0.30".parse().unwrap(), 8080))
        );

        let mut error = vec![0u8; 16];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_answer(&error).unwrap(), None);
        error[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_answer(&error).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(parse_answer(&[0; 8]).is_err());
    }
}
