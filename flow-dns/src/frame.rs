//! The DNS messages in a frame the datapath copied: Ethernet (with up to two
//! VLAN tags), IPv4 or IPv6 (extension headers walked), then UDP or TCP.
//!
//! Every length in the frame is checked against the bytes at hand. A frame
//! whose IP datagram is longer than what was copied is reported as
//! [`FrameError::Cut`], since a DNS message cannot be read from its first
//! part. Over TCP, a segment may hold several length-prefixed messages, or
//! part of one: whole ones are returned and the rest counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const VLAN_TYPES: [u16; 2] = [0x8100, 0x88a8];
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXTENSIONS: usize = 8;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Why a frame holds no readable DNS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header ends past the copied bytes, or a length field is impossible.
    #[error("frame truncated or inconsistent in its {0} header")]
    Truncated(&'static str),
    /// The datagram is longer than what the datapath copied.
    #[error("datagram of {datagram} bytes, {copied} copied")]
    Cut {
        /// IP datagram length the header states.
        datagram: usize,
        /// Bytes of it that were copied.
        copied: usize,
    },
    /// Neither IPv4 nor IPv6, a fragment, or neither UDP nor TCP.
    #[error("not a udp or tcp datagram")]
    NotTransport,
}

/// Transport of a DNS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One message per datagram.
    Udp,
    /// Messages with a two-byte length prefix.
    Tcp,
}

/// The DNS payload of a frame, and who sent it to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Source port.
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
    /// UDP or TCP.
    pub transport: Transport,
    /// The transport payload.
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The DNS messages in the payload: the whole UDP payload, or each
    /// complete length-prefixed TCP message. The count of bytes that were not
    /// part of a complete message comes second.
    pub fn messages(&self) -> (Vec<&'a [u8]>, usize) {
        match self.transport {
            Transport::Udp => (vec![self.payload], 0),
            Transport::Tcp => {
                let mut messages = Vec::new();
                let mut rest = self.payload;
                while let [high, low, tail @ ..] = rest {
                    let len = usize::from(u16::from_be_bytes([*high, *low]));
                    let Some(message) = tail.get(..len) else {
                        break;
                    };
                    messages.push(message);
                    rest = tail.get(len..).unwrap_or_default();
                }
                (messages, rest.len())
            }
        }
    }
}

/// Reads the headers of a copied frame, down to the transport payload.
///
/// # Errors
/// [`FrameError`] when a header is short or inconsistent, the datagram was
/// cut, or it is not UDP or TCP.
pub fn read(frame: &[u8]) -> Result<Segment<'_>, FrameError> {
    let (ethertype, l3) = ethernet(frame)?;
    let (source, destination, protocol, datagram) = match ethertype {
        ETH_P_IP => ipv4(l3)?,
        ETH_P_IPV6 => ipv6(l3)?,
        _ => return Err(FrameError::NotTransport),
    };
    transport(protocol, datagram).map(|(source_port, destination_port, transport, payload)| {
        Segment {
            source,
            destination,
            source_port,
            destination_port,
            transport,
            payload,
        }
    })
}

fn be16(bytes: &[u8], at: usize, header: &'static str) -> Result<u16, FrameError> {
    match bytes.get(at..at + 2) {
        Some(&[high, low]) => Ok(u16::from_be_bytes([high, low])),
        _ => Err(FrameError::Truncated(header)),
    }
}

fn ethernet(frame: &[u8]) -> Result<(u16, &[u8]), FrameError> {
    let mut ethertype = be16(frame, 12, "ethernet")?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !VLAN_TYPES.contains(&ethertype) {
            break;
        }
        ethertype = be16(frame, offset + 2, "vlan")?;
        offset += 4;
    }
    Ok((ethertype, frame.get(offset..).unwrap_or_default()))
}

/// The datagram's addresses, protocol and transport part, checked against
/// its total length.
type Network<'a> = (IpAddr, IpAddr, u8, &'a [u8]);

fn ipv4(packet: &[u8]) -> Result<Network<'_>, FrameError> {
    let header = packet.get(..20).ok_or(FrameError::Truncated("ipv4"))?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(be16(header, 2, "ipv4")?);
    if header[0] >> 4 != 4 || header_len < 20 || total < header_len {
        return Err(FrameError::Truncated("ipv4"));
    }
    // More fragments, or an offset: a DNS message is never read from a fragment.
    if be16(header, 6, "ipv4")? & 0x3fff != 0 {
        return Err(FrameError::NotTransport);
    }
    let datagram = cut(packet, total)?;
    let source = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let destination = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let rest = datagram
        .get(header_len..)
        .ok_or(FrameError::Truncated("ipv4"))?;
    Ok((source.into(), destination.into(), header[9], rest))
}

fn ipv6(packet: &[u8]) -> Result<Network<'_>, FrameError> {
    let header = packet.get(..40).ok_or(FrameError::Truncated("ipv6"))?;
    if header[0] >> 4 != 6 {
        return Err(FrameError::Truncated("ipv6"));
    }
    let total = 40 + usize::from(be16(header, 4, "ipv6")?);
    let datagram = cut(packet, total)?;
    let address = |at: usize| {
        let mut octets = [0; 16];
        octets.copy_from_slice(&header[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let (mut next, mut offset) = (header[6], 40);
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext = datagram
                    .get(offset..offset + 2)
                    .ok_or(FrameError::Truncated("ipv6 extension"))?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            44 => return Err(FrameError::NotTransport),
            _ => break,
        }
    }
    let rest = datagram
        .get(offset..)
        .ok_or(FrameError::Truncated("ipv6 extension"))?;
    Ok((address(8).into(), address(24).into(), next, rest))
}

/// The first `total` bytes of `packet`, or why they are not all there.
fn cut(packet: &[u8], total: usize) -> Result<&[u8], FrameError> {
    packet.get(..total).ok_or(FrameError::Cut {
        datagram: total,
        copied: packet.len(),
    })
}

type Ports<'a> = (u16, u16, Transport, &'a [u8]);

fn transport(protocol: u8, datagram: &[u8]) -> Result<Ports<'_>, FrameError> {
    let ports = |header| Ok((be16(datagram, 0, header)?, be16(datagram, 2, header)?));
    match protocol {
        UDP => {
            let (source, destination) = ports("udp")?;
            let len = usize::from(be16(datagram, 4, "udp")?);
            let payload = datagram.get(8..len).ok_or(FrameError::Truncated("udp"))?;
            Ok((source, destination, Transport::Udp, payload))
        }
        TCP => {
            let (source, destination) = ports("tcp")?;
            let offset = datagram
                .get(12)
                .map(|byte| usize::from(byte >> 4) * 4)
                .filter(|offset| *offset >= 20)
                .ok_or(FrameError::Truncated("tcp"))?;
            let payload = datagram.get(offset..).ok_or(FrameError::Truncated("tcp"))?;
            Ok((source, destination, Transport::Tcp, payload))
        }
        _ => Err(FrameError::NotTransport),
    }
}

#[cfg(test)]
mod tests;
