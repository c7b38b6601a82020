//! Which interfaces to watch: glob selection, and following links that appear
//! and disappear through rtnetlink (RTM_NEWLINK / RTM_DELLINK).
//!
//! Everything here works on the network namespace of the calling thread, which is
//! how the agent runs inside a node's namespace (`ip netns exec NODE flow-agent`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const RTMGRP_LINK: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// `ARPHRD_ETHER`: an Ethernet device (veth, physical NICs, bridges).
pub const ARPHRD_ETHER: u16 = 1;
/// `AF_BRIDGE`: the family of bridge-port link messages.
const AF_BRIDGE: u8 = 7;

/// `ARPHRD_LOOPBACK`: the loopback device (its TC hooks see an Ethernet header).
pub const ARPHRD_LOOPBACK: u16 = 772;

/// Errors from interface selection and rtnetlink.
#[derive(Debug, Error)]
pub enum InterfaceError {
    /// A glob pattern does not parse.
    #[error("invalid interface pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: glob::PatternError,
    },
    /// No pattern was given.
    #[error("no interface pattern given: pass --interface GLOB (for example --interface 'veth*')")]
    NoPattern,
    /// A netlink socket operation failed.
    #[error("rtnetlink {operation} failed")]
    Netlink {
        /// What was being done.
        operation: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel sent a message that does not parse.
    #[error("malformed rtnetlink message: {0}")]
    Malformed(&'static str),
}

/// Include and exclude glob patterns over interface names.
#[derive(Clone, Debug)]
pub struct InterfaceSelector {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

fn compile(patterns: &[String]) -> Result<Vec<glob::Pattern>, InterfaceError> {
    patterns
        .iter()
        .map(|pattern| {
            glob::Pattern::new(pattern).map_err(|source| InterfaceError::Pattern {
                pattern: pattern.clone(),
                source,
            })
        })
        .collect()
}

impl InterfaceSelector {
    /// Builds a selector; at least one include pattern is required.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, InterfaceError> {
        if include.is_empty() {
            return Err(InterfaceError::NoPattern);
        }
        Ok(Self {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    /// Whether an interface name is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.include.iter().any(|pattern| pattern.matches(name))
            && !self.exclude.iter().any(|pattern| pattern.matches(name))
    }

    /// The include patterns, as given.
    pub fn patterns(&self) -> Vec<&str> {
        self.include.iter().map(glob::Pattern::as_str).collect()
    }

    /// The exclusion patterns.
    pub fn excludes(&self) -> Vec<&str> {
        self.exclude.iter().map(glob::Pattern::as_str).collect()
    }
}

/// A link as rtnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware type (`ARPHRD_*`).
    pub link_type: u16,
    /// The bridge (or other master device) this link is a port of.
    pub master: Option<u32>,
}

impl Link {
    /// Whether the TC programs can parse this link's packets: they expect an
    /// Ethernet header.
    pub fn has_ethernet_header(&self) -> bool {
        matches!(self.link_type, ARPHRD_ETHER | ARPHRD_LOOPBACK)
    }
}

/// A change to the set of links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (rename, state change).
    New(Link),
    /// A link disappeared.
    Removed(Link),
    /// Notifications were lost (socket buffer overrun): re-list every link.
    Resync,
}

fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let slice = bytes.get(offset..offset + 2)?;
    Some(u16::from_ne_bytes([slice[0], slice[1]]))
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let slice = bytes.get(offset..offset + 4)?;
    Some(u32::from_ne_bytes([slice[0], slice[1], slice[2], slice[3]]))
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// One parsed rtnetlink message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// An `RTM_NEWLINK` or `RTM_DELLINK` of a link (not a bridge port).
    Link {
        /// `RTM_NEWLINK` or `RTM_DELLINK`.
        message_type: u16,
        /// The link it describes.
        link: Link,
    },
    /// The end of a dump.
    Done,
    /// An `NLMSG_ERROR`, with its (negative) errno; 0 is an acknowledgement.
    Error(i32),
    /// Any other message, ignored.
    Other,
}

/// Parses a buffer of netlink messages as the kernel sends them (a dump
/// reply or a multicast notification). Never panics: a length or attribute
/// that does not fit the buffer is [`InterfaceError::Malformed`].
pub fn parse_messages(mut buffer: &[u8]) -> Result<Vec<Message>, InterfaceError> {
    let mut messages = Vec::new();
    while !buffer.is_empty() {
        let length =
            read_u32(buffer, 0).ok_or(InterfaceError::Malformed("truncated header"))? as usize;
        if length < NLMSG_HDRLEN || length > buffer.len() {
            return Err(InterfaceError::Malformed("message length out of bounds"));
        }
        let message_type =
            read_u16(buffer, 4).ok_or(InterfaceError::Malformed("truncated header"))?;
        let body = &buffer[NLMSG_HDRLEN..length];
        messages.push(match message_type {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                let errno =
                    read_u32(body, 0).ok_or(InterfaceError::Malformed("truncated error"))?;
                Message::Error(errno as i32)
            }
            // Bridge-port notifications (family AF_BRIDGE) share the link
            // group: a port leaving a bridge is an RTM_DELLINK of a link that
            // still exists.
            RTM_NEWLINK | RTM_DELLINK if body.first() == Some(&AF_BRIDGE) => Message::Other,
            RTM_NEWLINK | RTM_DELLINK => Message::Link {
                message_type,
                link: parse_link(body)?,
            },
            _ => Message::Other,
        });
        buffer = buffer.get(align4(length)..).unwrap_or_default();
    }
    Ok(messages)
}

fn parse_link(body: &[u8]) -> Result<Link, InterfaceError> {
    if body.len() < IFINFOMSG_LEN {
        return Err(InterfaceError::Malformed("truncated ifinfomsg"));
    }
    let link_type = read_u16(body, 2).ok_or(InterfaceError::Malformed("truncated ifinfomsg"))?;
    let index = read_u32(body, 4).ok_or(InterfaceError::Malformed("truncated ifinfomsg"))?;
    let mut attributes = &body[IFINFOMSG_LEN..];
    let mut name = None;
    let mut master = None;
    while attributes.len() >= 4 {
        let length = usize::from(read_u16(attributes, 0).unwrap_or(0));
        let kind = read_u16(attributes, 2).unwrap_or(0);
        if length < 4 || length > attributes.len() {
            return Err(InterfaceError::Malformed("attribute length out of bounds"));
        }
        if kind == IFLA_IFNAME {
            let value = &attributes[4..length];
            let end = value
                .iter()
                .position(|&byte| byte == 0)
                .unwrap_or(value.len());
            name = Some(
                std::str::from_utf8(&value[..end])
                    .map_err(|_| InterfaceError::Malformed("interface name is not UTF-8"))?
                    .to_owned(),
            );
        }
        if kind == IFLA_MASTER {
            master = read_u32(&attributes[..length], 4).filter(|&master| master != 0);
        }
        attributes = attributes.get(align4(length)..).unwrap_or_default();
    }
    Ok(Link {
        index,
        name: name.ok_or(InterfaceError::Malformed("link without a name"))?,
        link_type,
        master,
    })
}

fn netlink_socket(groups: u32) -> Result<OwnedFd, InterfaceError> {
    let error = |operation| move |source| InterfaceError::Netlink { operation, source };
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(error("socket")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new, valid descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zero is a valid sockaddr_nl.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as u16;
    address.nl_groups = groups;
    // SAFETY: `address` is a valid sockaddr_nl of the size passed.
    let ret = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::from_ref(&address).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if ret < 0 {
        return Err(error("bind")(io::Error::last_os_error()));
    }
    if groups != 0 {
        // A bigger receive buffer makes overruns (and resyncs) rarer when many
        // pods start at once.
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt reads an int of the size passed.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_ref(&size).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
    }
    Ok(socket)
}

fn receive(socket: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    if received < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(received as usize)
    }
}

/// Every address configured in the current network namespace: this node's own
/// addresses.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut current = list;
    while !current.is_null() {
        // SAFETY: `current` is a node of the list getifaddrs returned.
        let entry = unsafe { &*current };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its type.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let address = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                addresses.push(std::net::IpAddr::from(
                    u32::from_be(address.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let address = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                addresses.push(std::net::IpAddr::from(address.sin6_addr.s6_addr));
            }
        }
        current = entry.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// Lists every link of the current network namespace.
pub fn list_links() -> Result<Vec<Link>, InterfaceError> {
    let socket = netlink_socket(0)?;
    const REQUEST_LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut request = [0u8; REQUEST_LEN];
    request[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC and zeros.
    // SAFETY: `request` is valid for reads of its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(InterfaceError::Netlink {
            operation: "send RTM_GETLINK",
            source: io::Error::last_os_error(),
        });
    }
    let mut links = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let received = match receive(&socket, &mut buffer) {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(&socket)?;
                continue;
            }
            Err(source) => {
                return Err(InterfaceError::Netlink {
                    operation: "receive RTM_GETLINK dump",
                    source,
                });
            }
        };
        for message in parse_messages(&buffer[..received])? {
            match message {
                Message::Link { link, .. } => links.push(link),
                Message::Done => return Ok(links),
                Message::Error(0) | Message::Other => {}
                Message::Error(errno) => {
                    return Err(InterfaceError::Netlink {
                        operation: "RTM_GETLINK dump",
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
            }
        }
    }
}

fn wait_readable(socket: &OwnedFd) -> Result<(), InterfaceError> {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ret = unsafe { libc::poll(&mut poll, 1, 5_000) };
    match ret {
        1.. => Ok(()),
        0 => Err(InterfaceError::Netlink {
            operation: "wait for RTM_GETLINK dump",
            source: io::Error::from(io::ErrorKind::TimedOut),
        }),
        _ => Err(InterfaceError::Netlink {
            operation: "poll",
            source: io::Error::last_os_error(),
        }),
    }
}

/// Receives link notifications. Open it *before* listing links, so that no
/// change between the listing and the subscription is missed.
#[derive(Debug)]
pub struct LinkMonitor {
    socket: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribes to RTNLGRP_LINK in the current network namespace.
    pub fn open() -> Result<Self, InterfaceError> {
        let socket = netlink_socket(RTMGRP_LINK)?;
        // SAFETY: the AsyncFd owns the socket, which stays open until it drops.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|error| InterfaceError::Netlink {
                operation: "register with the runtime",
                source: error.into_parts().1,
            })?;
        Ok(Self {
            socket,
            buffer: vec![0u8; 64 * 1024],
        })
    }

    /// Waits for the next batch of link changes.
    pub async fn next(&mut self) -> Result<Vec<LinkEvent>, InterfaceError> {
        loop {
            let mut guard =
                self.socket
                    .readable()
                    .await
                    .map_err(|source| InterfaceError::Netlink {
                        operation: "poll",
                        source,
                    })?;
            match receive(guard.get_inner(), &mut self.buffer) {
                Ok(received) => {
                    let events = parse_messages(&self.buffer[..received])?
                        .into_iter()
                        .filter_map(|message| match message {
                            Message::Link {
                                message_type: RTM_NEWLINK,
                                link,
                            } => Some(LinkEvent::New(link)),
                            Message::Link { link, .. } => Some(LinkEvent::Removed(link)),
                            _ => None,
                        })
                        .collect();
                    return Ok(events);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![LinkEvent::Resync]);
                }
                Err(source) => {
                    return Err(InterfaceError::Netlink {
                        operation: "receive",
                        source,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(message_type: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        bytes.extend_from_slice(&message_type.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(body);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn link_body(index: u32, link_type: u16, name: Option<&str>) -> Vec<u8> {
        let mut body = vec![0u8, 0];
        body.extend_from_slice(&link_type.to_ne_bytes());
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        // An unrelated attribute first (IFLA_MTU), to exercise the walk.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&4u16.to_ne_bytes());
        body.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(name) = name {
            let value_len = name.len() + 1;
            body.extend_from_slice(&((4 + value_len) as u16).to_ne_bytes());
            body.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        body
    }

    #[test]
    fn a_bridge_port_names_its_master() {
        let mut body = link_body(7, ARPHRD_ETHER, Some("veth-a"));
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&IFLA_MASTER.to_ne_bytes());
        body.extend_from_slice(&42u32.to_ne_bytes());
        let messages = parse_messages(&message(RTM_NEWLINK, &body)).unwrap();
        assert!(
            matches!(&messages[0], Message::Link { link, .. } if link.master == Some(42)),
            "{messages:?}"
        );
        // IFLA_MASTER 0 (`nomaster`) is no master.
        let mut body = link_body(7, ARPHRD_ETHER, Some("veth-a"));
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&IFLA_MASTER.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        let messages = parse_messages(&message(RTM_NEWLINK, &body)).unwrap();
        assert!(
            matches!(&messages[0], Message::Link { link, .. } if link.master.is_none()),
            "{messages:?}"
        );
    }

    #[test]
    fn bridge_port_notifications_are_not_link_removals() {
        // `ip link set veth-a nomaster`: an AF_BRIDGE RTM_DELLINK for a link
        // that stays.
        let mut bridge = link_body(7, ARPHRD_ETHER, Some("veth-a"));
        bridge[0] = AF_BRIDGE;
        let mut buffer = message(RTM_DELLINK, &bridge);
        buffer.extend(message(RTM_NEWLINK, &bridge));
        buffer.extend(message(
            RTM_DELLINK,
            &link_body(7, ARPHRD_ETHER, Some("veth-a")),
        ));
        let messages = parse_messages(&buffer).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[..2], [Message::Other, Message::Other]);
        assert!(matches!(
            messages[2],
            Message::Link {
                message_type: RTM_DELLINK,
                ..
            }
        ));
    }

    #[test]
    fn new_and_deleted_links_parse_with_name_index_and_type() {
        let mut buffer = message(RTM_NEWLINK, &link_body(7, ARPHRD_ETHER, Some("veth-a")));
        buffer.extend(message(
            RTM_DELLINK,
            &link_body(9, ARPHRD_LOOPBACK, Some("lo")),
        ));
        buffer.extend(message(NLMSG_DONE, &[0; 4]));
        let messages = parse_messages(&buffer).unwrap();
        assert_eq!(
            messages,
            [
                Message::Link {
                    message_type: RTM_NEWLINK,
                    link: Link {
                        index: 7,
                        name: "veth-a".into(),
                        link_type: ARPHRD_ETHER,
                        master: None,
                    }
                },
                Message::Link {
                    message_type: RTM_DELLINK,
                    link: Link {
                        index: 9,
                        name: "lo".into(),
                        link_type: ARPHRD_LOOPBACK,
                        master: None,
                    }
                },
                Message::Done,
            ]
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        // Length beyond the buffer.
        let mut buffer = message(RTM_NEWLINK, &link_body(7, ARPHRD_ETHER, Some("x")));
        buffer[0] = 200;
        assert!(matches!(
            parse_messages(&buffer),
            Err(InterfaceError::Malformed(_))
        ));
        // Length below the header.
        let mut buffer = message(RTM_NEWLINK, &[]);
        buffer[0] = 4;
        assert!(matches!(
            parse_messages(&buffer),
            Err(InterfaceError::Malformed(_))
        ));
        // A link without IFLA_IFNAME.
        let buffer = message(RTM_NEWLINK, &link_body(7, ARPHRD_ETHER, None));
        assert!(matches!(
            parse_messages(&buffer),
            Err(InterfaceError::Malformed(_))
        ));
        // A truncated ifinfomsg.
        let buffer = message(RTM_NEWLINK, &[0; 8]);
        assert!(matches!(
            parse_messages(&buffer),
            Err(InterfaceError::Malformed(_))
        ));
        // An attribute whose length runs past the message.
        let mut body = link_body(7, ARPHRD_ETHER, Some("x"));
        body[16] = 255;
        assert!(matches!(
            parse_messages(&message(RTM_NEWLINK, &body)),
            Err(InterfaceError::Malformed(_))
        ));
        // Too short for a header at all.
        assert!(matches!(
            parse_messages(&[1, 2]),
            Err(InterfaceError::Malformed(_))
        ));
    }

    #[test]
    fn netlink_errors_carry_the_errno() {
        let buffer = message(NLMSG_ERROR, &(-(libc::EPERM)).to_ne_bytes());
        assert_eq!(
            parse_messages(&buffer).unwrap(),
            [Message::Error(-libc::EPERM)]
        );
    }

    #[test]
    fn selector_includes_globs_and_honours_excludes() {
        let selector =
            InterfaceSelector::new(&["veth*".into(), "eth0".into()], &["veth-skip*".into()])
                .unwrap();
        assert!(selector.matches("veth123"));
        assert!(selector.matches("eth0"));
        assert!(!selector.matches("eth1"));
        assert!(!selector.matches("veth-skip1"));
        assert!(matches!(
            InterfaceSelector::new(&[], &[]),
            Err(InterfaceError::NoPattern)
        ));
        let error = InterfaceSelector::new(&["veth[".into()], &[]).unwrap_err();
        assert!(error.to_string().contains("veth["), "{error}");
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addresses = local_addresses();
        assert!(
            addresses.contains(&"127.0.0.1".parse().unwrap()),
            "{addresses:?}"
        );
    }

    #[test]
    fn listing_links_finds_loopback() {
        let links = list_links().unwrap();
        assert!(
            links
                .iter()
                .any(|link| link.name == "lo" && link.link_type == ARPHRD_LOOPBACK)
        );
    }
}
