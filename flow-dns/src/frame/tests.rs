use super::*;

fn ethernet(ethertype: u16, tags: &[u16]) -> Vec<u8> {
    let mut frame = vec![0; 12];
    for tag in tags {
        frame.extend(tag.to_be_bytes());
        frame.extend([0, 7]);
    }
    frame.extend(ethertype.to_be_bytes());
    frame
}

fn udp(source: u16, destination: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(source.to_be_bytes());
    out.extend(destination.to_be_bytes());
    out.extend(u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    out.extend([0, 0]);
    out.extend(payload);
    out
}

fn tcp(source: u16, destination: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(source.to_be_bytes());
    out.extend(destination.to_be_bytes());
    out.extend([0; 8]);
    out.extend([5 << 4, 0x18, 0, 0, 0, 0, 0, 0]);
    out.extend(payload);
    out
}

fn ipv4(protocol: u8, flags_offset: u16, transport: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + transport.len()).unwrap();
    let mut out = vec![0x45, 0];
    out.extend(total.to_be_bytes());
    out.extend([0, 1]);
    out.extend(flags_offset.to_be_bytes());
    out.extend([64, protocol, 0, 0, 10, 96, 0, 10, 10, 1, 0, 2]);
    out.extend(transport);
    out
}

fn ipv6(next: u8, extensions: &[u8], transport: &[u8]) -> Vec<u8> {
    let payload = u16::try_from(extensions.len() + transport.len()).unwrap();
    let mut out = vec![0x60, 0, 0, 0];
    out.extend(payload.to_be_bytes());
    out.extend([next, 64]);
    out.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
    out.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]);
    out.extend(extensions);
    out.extend(transport);
    out
}

#[test]
fn a_udp_answer_over_ipv4_gives_its_payload_and_ends() {
    let mut frame = ethernet(ETH_P_IP, &[]);
    frame.extend(ipv4(UDP, 0x4000, &udp(53, 40_000, b"dns!")));
    let segment = read(&frame).unwrap();
    assert_eq!(
        segment,
        Segment {
            source: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            destination: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
            source_port: 53,
            destination_port: 40_000,
            transport: Transport::Udp,
            payload: b"dns!",
        }
    );
    assert_eq!(segment.messages(), (vec![&b"dns!"[..]], 0));
}

#[test]
fn vlan_tags_and_ipv6_extension_headers_are_walked() {
    let mut frame = ethernet(ETH_P_IPV6, &[0x88a8, 0x8100]);
    // A hop-by-hop header of 8 bytes, then UDP.
    let hop_by_hop = [UDP, 0, 0, 0, 0, 0, 0, 0];
    frame.extend(ipv6(0, &hop_by_hop, &udp(53, 40_001, b"answer")));
    let segment = read(&frame).unwrap();
    assert_eq!(
        segment.source,
        "fd00::a".parse::<IpAddr>().unwrap_or(segment.destination)
    );
    assert_eq!(segment.destination_port, 40_001);
    assert_eq!(segment.payload, b"answer");
}

#[test]
fn tcp_segments_give_each_whole_message_and_count_the_rest() {
    let mut payload = vec![0, 3];
    payload.extend(b"one");
    payload.extend([0, 2]);
    payload.extend(b"tw");
    payload.extend([0, 9]);
    payload.extend(b"part");
    let mut frame = ethernet(ETH_P_IP, &[]);
    frame.extend(ipv4(TCP, 0, &tcp(53, 40_002, &payload)));
    let segment = read(&frame).unwrap();
    assert_eq!(segment.transport, Transport::Tcp);
    assert_eq!(segment.messages(), (vec![&b"one"[..], &b"tw"[..]], 6));
}

#[test]
fn a_datagram_longer_than_the_copy_is_cut() {
    let mut frame = ethernet(ETH_P_IP, &[]);
    frame.extend(ipv4(UDP, 0, &udp(53, 40_000, &[7; 600])));
    frame.truncate(14 + 300);
    assert_eq!(
        read(&frame),
        Err(FrameError::Cut {
            datagram: 20 + 8 + 600,
            copied: 300
        })
    );
}

#[test]
fn fragments_and_other_protocols_are_not_read() {
    let mut fragment = ethernet(ETH_P_IP, &[]);
    fragment.extend(ipv4(UDP, 0x2000, &udp(53, 40_000, b"x")));
    assert_eq!(read(&fragment), Err(FrameError::NotTransport));
    let mut icmp = ethernet(ETH_P_IP, &[]);
    icmp.extend(ipv4(1, 0, &[8, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(read(&icmp), Err(FrameError::NotTransport));
    assert_eq!(read(&ethernet(0x0806, &[])), Err(FrameError::NotTransport));
}

#[test]
fn every_truncation_and_bad_length_is_an_error_not_a_panic() {
    let mut frame = ethernet(ETH_P_IPV6, &[0x8100]);
    frame.extend(ipv6(
        43,
        &[TCP, 0, 0, 0, 0, 0, 0, 0],
        &tcp(53, 40_003, &[0, 1, 9]),
    ));
    assert!(read(&frame).is_ok());
    for end in 0..frame.len() {
        assert!(read(&frame[..end]).is_err(), "{end} bytes");
    }
    // An IHL below 5, a UDP length below its header, a TCP offset below 5.
    let mut bad_ihl = ethernet(ETH_P_IP, &[]);
    bad_ihl.extend(ipv4(UDP, 0, &udp(53, 1, b"x")));
    bad_ihl[14] = 0x44;
    assert_eq!(read(&bad_ihl), Err(FrameError::Truncated("ipv4")));
    let mut bad_udp = ethernet(ETH_P_IP, &[]);
    bad_udp.extend(ipv4(UDP, 0, &udp(53, 1, b"x")));
    bad_udp[14 + 20 + 5] = 4;
    assert_eq!(read(&bad_udp), Err(FrameError::Truncated("udp")));
    let mut bad_tcp = ethernet(ETH_P_IP, &[]);
    bad_tcp.extend(ipv4(TCP, 0, &tcp(53, 1, b"")));
    bad_tcp[14 + 20 + 12] = 4 << 4;
    assert_eq!(read(&bad_tcp), Err(FrameError::Truncated("tcp")));
}
