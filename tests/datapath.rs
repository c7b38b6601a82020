//! The classifiers against hand-built packets through `BPF_PROG_TEST_RUN`: every
//! test asserts the exact flow key and counters, and that the verdict is always
//! `TC_ACT_UNSPEC` (pass the packet on, untouched).
//!
//! Needs root (loads BPF programs); skipped with a message otherwise.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics to report failure"
)]

mod common;

use std::time::Duration;

use aya::programs::{TestRun as _, TestRunOptions};
use common::packet::{self, *};
use flow_agent::{
    datapath::{Datapath, DatapathConfig, DnsCopySettings},
    drain::FlowSample,
};
use flow_common::{Counter, Direction, DnsCopy, FlowKey, tcp_flag};

/// TC_ACT_UNSPEC, which is also TCX_NEXT: the only verdict the programs return.
const PASS: u32 = u32::MAX;

struct Harness {
    datapath: Datapath,
}

/// Both parsers: direct reads of the linear area (what nearly every packet
/// takes), and `bpf_skb_load_bytes` (packets whose headers lie in paged data).
fn both_readers() -> [DatapathConfig; 2] {
    [
        DatapathConfig::default(),
        DatapathConfig {
            paged_reads_only: true,
            ..DatapathConfig::default()
        },
    ]
}

impl Harness {
    fn new() -> Self {
        Self::with(DatapathConfig::default())
    }

    fn with(config: DatapathConfig) -> Self {
        Self {
            datapath: Datapath::load(&config).expect("load datapath"),
        }
    }

    fn run(&mut self, direction: Direction, frame: &[u8], context: Option<SkbContext>) {
        let context = context.map(|context| context.bytes());
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: context.as_deref(),
            ..TestRunOptions::new()
        };
        let result = self
            .datapath
            .classifier_mut(direction)
            .unwrap()
            .test_run(options)
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, PASS, "verdict must be TC_ACT_UNSPEC");
    }

    fn ingress(&mut self, frame: &[u8]) {
        self.run(Direction::Ingress, frame, None);
    }

    fn drain(&mut self) -> Vec<FlowSample> {
        self.datapath.drain().expect("drain").into_samples()
    }

    /// Drains and expects exactly one flow.
    fn only_flow(&mut self) -> FlowSample {
        let samples = self.drain();
        assert_eq!(samples.len(), 1, "expected one flow, got {samples:#?}");
        samples[0]
    }

    fn counter(&self, counter: Counter) -> u64 {
        self.datapath.counters().unwrap().get(counter)
    }

    /// Checks every counter; `Inserted` only when listed.
    fn assert_counters(&self, expected: &[(Counter, u64)]) {
        let counters = self.datapath.counters().unwrap();
        for counter in Counter::ALL {
            if counter == Counter::Inserted && expected.iter().all(|(c, _)| *c != counter) {
                continue;
            }
            let want = expected
                .iter()
                .find(|(c, _)| *c == counter)
                .map_or(0, |(_, n)| *n);
            assert_eq!(counters.get(counter), want, "counter {}", counter.name());
        }
    }
}

const A4: [u8; 4] = [10, 1, 0, 2];
const B4: [u8; 4] = [10, 2, 0, 2];
const A6: &str = "fd00:1::2";
const B6: &str = "fd00:2::2";

fn key4(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: mapped(A4),
        dst_addr: mapped(B4),
        src_port,
        dst_port,
        protocol,
        ..FlowKey::default()
    }
}

fn key6(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: v6(A6),
        dst_addr: v6(B6),
        src_port,
        dst_port,
        protocol,
        ..FlowKey::default()
    }
}

#[test]
fn udp_datagram_bytes_count_ip_length() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let frame = Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[7; 100]));
        for _ in 0..3 {
            harness.ingress(&frame);
        }
        let flow = harness.only_flow();
        assert_eq!(flow.key, key4(UDP, 5000, 53));
        assert_eq!(flow.packets, 3);
        // 20 (IPv4) + 8 (UDP) + 100, the IP datagram; the Ethernet header is not counted.
        assert_eq!(flow.bytes, 3 * 128);
        assert_eq!(flow.first_direction, Direction::Ingress);
        assert_eq!(flow.first_ifindex, 1, "BPF_PROG_TEST_RUN runs on loopback");
        assert!(flow.first_seen_ns <= flow.last_seen_ns);
        // Held in the CPU's slot from first packet to drain: the flow map
        // was never touched.
        harness.assert_counters(&[(Counter::Inserted, 0)]);
    }
}

/// A flow is counted in its CPU's held slot until another flow takes the
/// slot; it then goes to the map, and when it comes back the drain adds the
/// two parts: counts, flags and times as if it had stayed in one place.
#[test]
fn a_flow_that_leaves_its_held_slot_and_comes_back_is_one_flow() {
    require_root!();
    on_one_cpu();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let [a, b] = one_slot_ports(2, 40_000, |port| key4(TCP, port, 80))
            .try_into()
            .unwrap();
        let segment =
            |port, flags, data: &[u8]| Ipv4::new(A4, B4, TCP).frame(&tcp(port, 80, flags, 0, data));
        // Flows of other slots stay held, the map untouched.
        let others: Vec<u16> = (50_000..)
            .filter(|&port| {
                flow_common::HeldFlows::slot_of(&key4(TCP, port, 80))
                    != flow_common::HeldFlows::slot_of(&key4(TCP, a, 80))
            })
            .take(3)
            .collect();
        let before = flow_model::record::MonotonicClock::monotonic_now_ns();
        harness.ingress(&segment(a, SYN, &[]));
        for &port in &others {
            harness.ingress(&segment(port, ACK, &[2; 5]));
        }
        harness.assert_counters(&[(Counter::Inserted, 0)]);
        harness.ingress(&segment(a, ACK, &[1; 10]));
        // b takes the slot: a goes to the map; then a takes it back, and b
        // goes to the map too.
        harness.ingress(&segment(b, ACK, &[1; 20]));
        harness.run(Direction::Egress, &segment(a, FIN | ACK, &[]), None);
        harness.assert_counters(&[(Counter::Inserted, 2)]);
        let samples = harness.drain();
        assert_eq!(samples.len(), 2 + others.len());
        let flow = flow_of(&samples, key4(TCP, a, 80));
        assert_eq!(flow.packets, 3);
        assert_eq!(flow.bytes, 40 + (40 + 10) + 40);
        assert_eq!(
            flow.tcp_flags,
            tcp_flag::SYN | tcp_flag::ACK | tcp_flag::FIN | tcp_flag::SYN_ONLY
        );
        // The first packet's hook and time, from the part in the map.
        assert_eq!(flow.first_direction, Direction::Ingress);
        assert!(before.saturating_sub(COARSE_TICK_NS) <= flow.first_seen_ns);
        assert!(flow.first_seen_ns <= flow.last_seen_ns);
        let flow = flow_of(&samples, key4(TCP, b, 80));
        assert_eq!((flow.packets, flow.bytes), (1, 40 + 20));
        for port in others {
            let flow = flow_of(&samples, key4(TCP, port, 80));
            assert_eq!((flow.packets, flow.bytes), (1, 45));
        }
        // The drain emptied the slots: the next one finds nothing.
        assert_eq!(harness.drain().len(), 0);
    }
}

#[test]
fn packet_times_come_from_the_monotonic_clock_with_either_clock() {
    use flow_model::record::MonotonicClock;
    require_root!();
    // The coarse clock (Linux 5.11+) lags CLOCK_MONOTONIC by at most a tick:
    // 10 ms at CONFIG_HZ=100, the slowest.
    const TICK_NS: u64 = 10_000_000;
    const GAP: Duration = Duration::from_millis(30);
    for precise_clock in [false, true] {
        let mut harness = Harness::with(DatapathConfig {
            precise_clock,
            ..DatapathConfig::default()
        });
        let frame = Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[7; 10]));
        let before = MonotonicClock::monotonic_now_ns();
        harness.ingress(&frame);
        std::thread::sleep(GAP);
        harness.ingress(&frame);
        let after = MonotonicClock::monotonic_now_ns();
        let flow = harness.only_flow();
        let slack = if precise_clock { 0 } else { TICK_NS };
        assert!(
            before - slack <= flow.first_seen_ns && flow.last_seen_ns <= after,
            "precise {precise_clock}: {before} <= {} <= {} <= {after}",
            flow.first_seen_ns,
            flow.last_seen_ns
        );
        let gap = flow.last_seen_ns - flow.first_seen_ns;
        assert!(
            gap + slack >= GAP.as_nanos() as u64,
            "precise {precise_clock}: {gap} ns between packets {GAP:?} apart"
        );
    }
}

#[test]
fn tcp_ports_flags_and_initiator_bits() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        harness.ingress(&Ipv4::new(A4, B4, TCP).frame(&tcp(40000, 80, SYN, 20, &[])));
        harness.ingress(&Ipv4::new(A4, B4, TCP).frame(&tcp(40000, 80, ACK | PSH, 12, &[1; 10])));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key4(TCP, 40000, 80));
        assert_eq!(flow.packets, 2);
        assert_eq!(flow.bytes, (20 + 40) + (20 + 32 + 10));
        assert_eq!(
            flow.tcp_flags,
            tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::SYN_ONLY
        );

        harness.ingress(&Ipv4::new(B4, A4, TCP).frame(&tcp(80, 40000, SYN | ACK, 20, &[])));
        let flow = harness.only_flow();
        assert_eq!(
            flow.tcp_flags,
            tcp_flag::SYN | tcp_flag::ACK | tcp_flag::SYN_ACK
        );
    }
}

#[test]
fn sctp_and_icmp_keys() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        harness.ingress(&Ipv4::new(A4, B4, SCTP).frame(&sctp(3868, 3868, &[0; 16])));
        harness.ingress(&Ipv4::new(A4, B4, ICMP).frame(&icmp(8, 0, &[0; 56])));
        let samples = harness.drain();
        assert_eq!(samples.len(), 2);
        let sctp_flow = samples.iter().find(|s| s.key.protocol == SCTP).unwrap();
        assert_eq!(sctp_flow.key, key4(SCTP, 3868, 3868));
        assert_eq!(sctp_flow.bytes, 20 + 12 + 16);
        let icmp_flow = samples.iter().find(|s| s.key.protocol == ICMP).unwrap();
        assert_eq!(
            icmp_flow.key,
            FlowKey {
                icmp_type: 8,
                icmp_code: 0,
                ..key4(ICMP, 0, 0)
            }
        );
        assert_eq!(icmp_flow.bytes, 84, "a default ping: 20 + 8 + 56");
    }
}

#[test]
fn ipv6_tcp_udp_and_icmpv6() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        harness.ingress(&Ipv6::new(A6, B6, TCP).frame(&tcp(40000, 443, SYN, 20, &[])));
        harness.ingress(&Ipv6::new(A6, B6, UDP).frame(&udp(5000, 53, &[0; 100])));
        harness.ingress(&Ipv6::new(A6, B6, ICMPV6).frame(&icmp(128, 0, &[0; 56])));
        let samples = harness.drain();
        assert_eq!(samples.len(), 3);
        let find = |protocol| *samples.iter().find(|s| s.key.protocol == protocol).unwrap();
        assert_eq!(find(TCP).key, key6(TCP, 40000, 443));
        assert_eq!(find(TCP).bytes, 40 + 40);
        assert_eq!(find(UDP).key, key6(UDP, 5000, 53));
        assert_eq!(find(UDP).bytes, 40 + 8 + 100);
        assert_eq!(
            find(ICMPV6).key,
            FlowKey {
                icmp_type: 128,
                ..key6(ICMPV6, 0, 0)
            }
        );
        assert_eq!(find(ICMPV6).bytes, 104);
    }
}

#[test]
fn vlan_and_qinq_tags_are_skipped() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let ip = Ipv4::new(A4, B4, UDP).build(&udp(5000, 53, &[0; 10]));
        harness.ingress(&ethernet_vlan(&[(ETH_P_8021Q, 100)], ETH_P_IP, &ip));
        harness.ingress(&ethernet_vlan(
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)],
            ETH_P_IP,
            &ip,
        ));
        let ip6 = Ipv6::new(A6, B6, UDP).build(&udp(5000, 53, &[0; 10]));
        harness.ingress(&ethernet_vlan(&[(ETH_P_8021Q, 7)], ETH_P_IPV6, &ip6));
        let samples = harness.drain();
        assert_eq!(samples.len(), 2);
        let v4 = samples
            .iter()
            .find(|s| s.key == key4(UDP, 5000, 53))
            .unwrap();
        assert_eq!((v4.packets, v4.bytes), (2, 2 * 38));
        let v6 = samples
            .iter()
            .find(|s| s.key == key6(UDP, 5000, 53))
            .unwrap();
        assert_eq!((v6.packets, v6.bytes), (1, 58));
    }
}

#[test]
fn ipv4_options_move_the_transport_header() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let mut ip = Ipv4::new(A4, B4, TCP);
        // Record route (7) padded to 8 bytes: IHL 7.
        ip.options = vec![7, 7, 4, 0, 0, 0, 0, 1];
        harness.ingress(&ip.frame(&tcp(40000, 80, SYN, 0, &[])));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key4(TCP, 40000, 80));
        assert_eq!(flow.bytes, 28 + 20);
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let mut ip = Ipv6::new(A6, B6, UDP);
        ip.extensions = vec![
            Extension::HopByHop(0),
            Extension::Routing(1),
            Extension::DestinationOptions(2),
            Extension::Authentication(4),
        ];
        harness.ingress(&ip.frame(&udp(5000, 53, &[0; 4])));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key6(UDP, 5000, 53));
        assert_eq!(flow.bytes, 40 + 8 + 16 + 24 + 24 + 8 + 4);

        // A 1 KiB Destination Options header puts UDP past what the direct
        // reader reaches (1024 bytes) though the packet is all linear: read
        // through bpf_skb_load_bytes, not called malformed.
        let mut ip = Ipv6::new(A6, B6, UDP);
        ip.extensions = vec![Extension::DestinationOptions(127)];
        harness.ingress(&ip.frame(&udp(5001, 53, &[0; 4])));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key6(UDP, 5001, 53));
        assert_eq!(flow.bytes, 40 + 1024 + 8 + 4);

        // Nine extension headers exceed the bounded walk: not counted, never dropped.
        let mut ip = Ipv6::new(A6, B6, UDP);
        ip.extensions = vec![Extension::DestinationOptions(0); 9];
        harness.ingress(&ip.frame(&udp(5000, 53, &[0; 4])));
        assert!(harness.drain().is_empty());
        harness.assert_counters(&[(Counter::Malformed, 1)]);
    }
}

#[test]
fn ipv4_fragments_inherit_the_first_fragments_ports() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let datagram = udp(5000, 53, &[9; 100]);
        let mut first = Ipv4::new(A4, B4, UDP);
        first.id = 77;
        first.more_fragments = true;
        harness.ingress(&first.frame(&datagram[..64]));
        let mut second = first.clone();
        second.fragment_offset = 8;
        second.more_fragments = false;
        harness.ingress(&second.frame(&datagram[64..]));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key4(UDP, 5000, 53));
        assert_eq!(flow.packets, 2);
        assert_eq!(flow.bytes, (20 + 64) + (20 + 44));

        // A later fragment whose first fragment was never seen: counted without ports.
        let mut orphan = Ipv4::new(A4, B4, UDP);
        orphan.id = 78;
        orphan.fragment_offset = 100;
        harness.ingress(&orphan.frame(&[0; 40]));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key4(UDP, 0, 0));
        assert_eq!(flow.bytes, 60);
        harness.assert_counters(&[(Counter::FragmentWithoutPorts, 1)]);
    }
}

#[test]
fn ipv6_fragments_inherit_the_first_fragments_ports() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        let datagram = udp(5000, 53, &[9; 100]);
        let mut first = Ipv6::new(A6, B6, UDP);
        first.extensions = vec![Extension::Fragment {
            offset: 0,
            more: true,
            id: 0xdead_beef,
        }];
        harness.ingress(&first.frame(&datagram[..64]));
        let mut second = Ipv6::new(A6, B6, UDP);
        second.extensions = vec![Extension::Fragment {
            offset: 8,
            more: false,
            id: 0xdead_beef,
        }];
        harness.ingress(&second.frame(&datagram[64..]));
        // An atomic fragment (offset 0, no more fragments) is a whole datagram.
        let mut atomic = Ipv6::new(A6, B6, UDP);
        atomic.extensions = vec![Extension::Fragment {
            offset: 0,
            more: false,
            id: 1,
        }];
        harness.ingress(&atomic.frame(&udp(5000, 53, &[0; 2])));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key6(UDP, 5000, 53));
        assert_eq!(flow.packets, 3);
        assert_eq!(flow.bytes, (40 + 8 + 64) + (40 + 8 + 44) + (40 + 8 + 10));
        harness.assert_counters(&[]);

        // Destination Options after the Fragment header: every fragment's
        // Fragment header names them (60), not UDP; the later fragment still
        // joins the first's flow.
        let mut first = Ipv6::new(A6, B6, UDP);
        first.extensions = vec![
            Extension::Fragment {
                offset: 0,
                more: true,
                id: 0xfeed,
            },
            Extension::DestinationOptions(0),
        ];
        harness.ingress(&first.frame(&datagram[..64]));
        let mut second = Ipv6::new(A6, B6, 60);
        second.extensions = vec![Extension::Fragment {
            offset: 9,
            more: false,
            id: 0xfeed,
        }];
        harness.ingress(&second.frame(&datagram[64..]));
        let flow = harness.only_flow();
        assert_eq!(flow.key, key6(UDP, 5000, 53));
        assert_eq!(flow.packets, 2);
        harness.assert_counters(&[]);
    }
}

#[test]
fn gso_super_packet_counts_its_segments() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        // A TCP super-packet of 3 * 800 bytes with timestamps (12-byte options): on
        // the wire, three segments each with a 20-byte IP and a 32-byte TCP header.
        // (BPF_PROG_TEST_RUN takes at most a page of data.)
        let frame = Ipv4::new(A4, B4, TCP).frame(&tcp(40000, 80, ACK, 12, &[0; 3 * 800]));
        let context = SkbContext {
            gso_segs: 3,
            gso_size: 800,
            ..SkbContext::default()
        };
        harness.run(Direction::Ingress, &frame, Some(context));
        let flow = harness.only_flow();
        assert_eq!(flow.packets, 3);
        assert_eq!(flow.bytes, 3 * (20 + 32 + 800));

        // Untrusted GSO (a VM's virtio or a tap device) comes with gso_segs 0:
        // 2,000 payload bytes at 800 a segment are three segments, the last
        // one short.
        let frame = Ipv4::new(A4, B4, TCP).frame(&tcp(40001, 80, ACK, 12, &[0; 2000]));
        let context = SkbContext {
            gso_segs: 0,
            gso_size: 800,
            ..SkbContext::default()
        };
        harness.run(Direction::Ingress, &frame, Some(context));
        let flow = harness.only_flow();
        assert_eq!(flow.packets, 3);
        assert_eq!(flow.bytes, 3 * (20 + 32) + 2000);
    }
}

#[test]
fn egress_packet_already_counted_on_ingress_is_not_counted_again() {
    require_root!();
    let node = flow_lab::Node::new(1).unwrap();
    let interface = node.pods[0].host_interface.clone();
    let index = node.ifindex(&interface).unwrap();
    // Attach inside the node namespace: that puts the interface in the counted set.
    let path = format!("/run/netns/{}", node.netns.name);
    std::thread::spawn(move || {
        flow_lab::enter(&path).unwrap();
        let mut harness = Harness::new();
        let failures = harness.datapath.attach_all(&[(index, interface.clone())]);
        assert!(failures.is_empty(), "{failures:?}");
        let frame = Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[0; 10]));
        // Entered through the watched interface: counted there, skipped here.
        let from_watched = SkbContext {
            ingress_ifindex: index,
            ..SkbContext::default()
        };
        harness.run(Direction::Egress, &frame, Some(from_watched));
        // Entered through an unwatched interface (or locally generated): counted.
        let from_elsewhere = SkbContext {
            ingress_ifindex: index + 1000,
            ..SkbContext::default()
        };
        harness.run(Direction::Egress, &frame, Some(from_elsewhere));
        harness.run(Direction::Egress, &frame, None);
        let flow = harness.only_flow();
        assert_eq!(flow.packets, 2);
        assert_eq!(flow.first_direction, Direction::Egress);
        harness.assert_counters(&[(Counter::Deduplicated, 1)]);
        harness.datapath.detach_all();
    })
    .join()
    .unwrap();
}

/// Indexes below `COUNTED_BITS_LIMIT` are bits of an array, the others keys of
/// a hash map: both skip exactly their own interfaces, and a detached
/// interface is counted again.
#[test]
fn egress_skips_exactly_the_counted_interfaces_below_and_past_the_bit_array() {
    require_root!();
    let node = flow_lab::Node::new(1).unwrap();
    let low_name = node.pods[0].host_interface.clone();
    let low = node.ifindex(&low_name).unwrap();
    let high = flow_common::COUNTED_BITS_LIMIT + 4_464;
    let high_name = format!("{}hi", node.prefix);
    node.netns
        .ip(&[
            "link",
            "add",
            "name",
            &high_name,
            "index",
            &high.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &format!("{high_name}p"),
        ])
        .unwrap();
    node.netns.ip(&["link", "set", &high_name, "up"]).unwrap();
    assert_eq!(node.ifindex(&high_name).unwrap(), high);
    let path = format!("/run/netns/{}", node.netns.name);
    std::thread::spawn(move || {
        flow_lab::enter(&path).unwrap();
        let mut harness = Harness::new();
        let failures = harness
            .datapath
            .attach_all(&[(low, low_name.clone()), (high, high_name.clone())]);
        assert!(failures.is_empty(), "{failures:?}");
        let frame = Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[0; 10]));
        let entered = |ingress_ifindex| SkbContext {
            ingress_ifindex,
            ..SkbContext::default()
        };
        // Skipped: the two counted interfaces.
        for index in [low, high] {
            harness.run(Direction::Egress, &frame, Some(entered(index)));
        }
        // Counted: the neighbouring bits and keys, and the last bit.
        let others = [
            low ^ 1,
            low + 64,
            high + 1,
            flow_common::COUNTED_BITS_LIMIT - 1,
        ];
        for index in others {
            harness.run(Direction::Egress, &frame, Some(entered(index)));
        }
        assert_eq!(harness.only_flow().packets, 4);
        harness.assert_counters(&[(Counter::Deduplicated, 2)]);
        // Detached, both are counted at egress again.
        harness.datapath.detach(low);
        harness.datapath.detach(high);
        for index in [low, high] {
            harness.run(Direction::Egress, &frame, Some(entered(index)));
        }
        assert_eq!(harness.only_flow().packets, 2);
    })
    .join()
    .unwrap();
}

#[test]
fn non_ip_frames_are_counted_as_such_and_passed() {
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        harness.ingress(&ethernet(ETH_P_ARP, &[0; 28]));
        harness.ingress(&ethernet_vlan(&[(ETH_P_8021Q, 5)], ETH_P_ARP, &[0; 28]));
        assert!(harness.drain().is_empty());
        harness.assert_counters(&[(Counter::NotIp, 2)]);
    }
}

/// Every prefix of a valid packet from `shortest` bytes on is malformed, passes
/// untouched, and creates no flow.
///
/// BPF_PROG_TEST_RUN itself refuses an untagged IPv4 (IPv6) frame shorter than
/// its IP header, so those frames start at 34 (54) bytes; frames wrapped in a
/// VLAN tag are not inspected and cover every truncation of the IP header.
fn assert_every_truncation_is_malformed(frame: &[u8], shortest: usize) {
    for config in both_readers() {
        assert_truncations(config, frame, shortest);
    }
}

fn assert_truncations(config: DatapathConfig, frame: &[u8], shortest: usize) {
    let mut harness = Harness::with(config);
    let lengths = shortest..frame.len();
    let count = lengths.len() as u64;
    for length in lengths {
        harness.ingress(&frame[..length]);
    }
    assert!(harness.drain().is_empty());
    harness.assert_counters(&[(Counter::Malformed, count)]);
    harness.ingress(frame);
    assert_eq!(harness.only_flow().packets, 1);
}

#[test]
fn truncated_packets_are_malformed_at_every_header() {
    require_root!();
    let mut options = Ipv4::new(A4, B4, TCP);
    options.options = vec![1; 4];
    for ip in [
        options.build(&tcp(1, 2, SYN, 8, &[])),
        Ipv4::new(A4, B4, UDP).build(&udp(1, 2, &[])),
        Ipv4::new(A4, B4, SCTP).build(&sctp(1, 2, &[])),
        Ipv4::new(A4, B4, ICMP).build(&icmp(8, 0, &[])),
    ] {
        assert_every_truncation_is_malformed(&ethernet(ETH_P_IP, &ip), 34);
        assert_every_truncation_is_malformed(
            &ethernet_vlan(&[(ETH_P_8021Q, 1)], ETH_P_IP, &ip),
            15,
        );
    }
    let mut ip6 = Ipv6::new(A6, B6, TCP);
    ip6.extensions = vec![Extension::HopByHop(1)];
    let ip6 = ip6.build(&tcp(1, 2, SYN, 0, &[]));
    assert_every_truncation_is_malformed(&ethernet(ETH_P_IPV6, &ip6), 54);
    assert_every_truncation_is_malformed(&ethernet_vlan(&[(ETH_P_8021Q, 1)], ETH_P_IPV6, &ip6), 15);
    assert_every_truncation_is_malformed(
        &ethernet_vlan(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
            ETH_P_IPV6,
            &Ipv6::new(A6, B6, UDP).build(&udp(1, 2, &[])),
        ),
        15,
    );
}

#[test]
fn inconsistent_headers_are_malformed() {
    require_root!();
    let payload = udp(1, 2, &[0; 8]);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.ihl = Some(4);
    cases.push(("ihl below 5", ip.frame(&payload)));
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.ihl = Some(15);
    cases.push(("ihl beyond the datagram", ip.frame(&payload)));
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.total_length = Some(19);
    cases.push(("total length below the header", ip.frame(&payload)));
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.total_length = Some(200);
    cases.push(("total length beyond the packet", ip.frame(&payload)));
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.version = 6;
    cases.push(("ethertype IPv4 but version 6", ip.frame(&payload)));
    let mut ip = Ipv4::new(A4, B4, UDP);
    ip.total_length = Some(20 + 4);
    cases.push(("udp header beyond the datagram", ip.frame(&payload)));
    cases.push((
        "tcp data offset below 5",
        Ipv4::new(A4, B4, TCP).frame(&tcp_with_offset(1, 2, SYN, 4, 0, &[])),
    ));
    cases.push((
        "tcp data offset beyond the datagram",
        Ipv4::new(A4, B4, TCP).frame(&tcp_with_offset(1, 2, SYN, 15, 0, &[])),
    ));
    let mut ip6 = Ipv6::new(A6, B6, UDP);
    ip6.payload_length = Some(500);
    cases.push(("ipv6 payload beyond the packet", ip6.frame(&payload)));
    let mut ip6 = Ipv6::new(A6, B6, UDP);
    ip6.version = 4;
    cases.push(("ethertype IPv6 but version 4", ip6.frame(&payload)));
    let mut ip6 = Ipv6::new(A6, B6, UDP);
    ip6.extensions = vec![Extension::HopByHop(30)];
    ip6.payload_length = Some(16);
    cases.push(("extension header beyond the datagram", ip6.frame(&payload)));

    for config in both_readers() {
        let mut harness = Harness::with(config);
        for (name, frame) in &cases {
            let before = harness.counter(Counter::Malformed);
            harness.ingress(frame);
            assert!(harness.drain().is_empty(), "{name}: must not create a flow");
            assert_eq!(harness.counter(Counter::Malformed), before + 1, "{name}");
        }
    }
}

#[test]
fn full_map_spills_to_the_ring_buffer_and_nothing_is_lost() {
    require_root!();
    on_one_cpu();
    let mut harness = Harness::with(DatapathConfig {
        map_entries: 2,
        ..DatapathConfig::default()
    });
    // Five flows of one held slot, the n-th with n packets: each flow's
    // first packet moves the one before out of the slot.
    let ports = one_slot_ports(5, 1000, |port| key4(UDP, port, 53));
    for (packets, &port) in (1..).zip(&ports) {
        for _ in 0..packets {
            harness.ingress(&Ipv4::new(A4, B4, UDP).frame(&udp(port, 53, &[0; 10])));
        }
    }
    let samples = harness.drain();
    assert_eq!(samples.len(), 5);
    for sample in &samples {
        // Each flow's total is exact, whether it went through the map, the
        // ring or neither.
        let packets = 1 + ports
            .iter()
            .position(|&port| port == sample.key.src_port)
            .unwrap() as u64;
        assert_eq!((sample.packets, sample.bytes), (packets, 38 * packets));
    }
    // Flows 1 and 2 filled the map; flows 3 and 4 found it full when they
    // left the slot, and went to the ring as one event each, whatever their
    // packets; flow 5 was still held at the drain.
    harness.assert_counters(&[
        (Counter::MapFull, 2),
        (Counter::Spilled, 2),
        (Counter::Inserted, 2),
    ]);
}

#[test]
fn dns_answers_are_copied_whole_within_the_budget_and_nothing_else_is() {
    require_root!();
    let answer = Ipv4::new(B4, A4, UDP).frame(&udp(53, 40_000, &[1; 100]));
    for config in both_readers() {
        let mut harness = Harness::with(DatapathConfig {
            dns: DnsCopySettings {
                copy: DnsCopy::Answers,
                ring_bytes: 1 << 16,
                bytes_per_second: 2 * answer.len() as u32,
            },
            ..config
        });
        harness.ingress(&answer);
        // A query, and a segment from port 53 without payload: not answers.
        harness.ingress(&Ipv4::new(A4, B4, UDP).frame(&udp(40_000, 53, &[2; 30])));
        harness.ingress(&Ipv4::new(B4, A4, TCP).frame(&tcp(53, 40_001, SYN | ACK, 0, &[])));
        // The second answer spends the rest of the second's budget; the third
        // finds none.
        harness.ingress(&answer);
        harness.ingress(&answer);
        let mut frames = Vec::new();
        harness.datapath.read_dns_frames(|frame| {
            frames.push((frame.bytes.to_vec(), frame.frame_len, frame.direction));
        });
        let copy = (answer.clone(), answer.len(), Some(Direction::Ingress));
        assert_eq!(frames, [copy.clone(), copy]);
        harness.assert_counters(&[(Counter::DnsCopied, 2), (Counter::DnsOverBudget, 1)]);
    }
}

/// How far the kernel's coarse clock may lag the monotonic clock: a tick
/// at the slowest HZ (100).
const COARSE_TICK_NS: u64 = 10_000_000;

#[test]
fn with_queries_asked_for_queries_to_port_53_are_copied_as_well_as_answers() {
    require_root!();
    let query = Ipv4::new(A4, B4, UDP).frame(&udp(40_000, 53, &[2; 30]));
    let tcp_query = Ipv4::new(A4, B4, TCP).frame(&tcp(40_001, 53, PSH | ACK, 0, &[4; 40]));
    let answer = Ipv4::new(B4, A4, UDP).frame(&udp(53, 40_000, &[1; 100]));
    for config in both_readers() {
        let mut harness = Harness::with(DatapathConfig {
            dns: DnsCopySettings {
                copy: DnsCopy::AnswersAndQueries,
                ring_bytes: 1 << 16,
                bytes_per_second: 1 << 20,
            },
            ..config
        });
        let before = flow_model::record::MonotonicClock::monotonic_now_ns();
        harness.ingress(&query);
        // A handshake to port 53 without payload, and UDP to another port:
        // not DNS messages.
        harness.ingress(&Ipv4::new(A4, B4, TCP).frame(&tcp(40_001, 53, SYN, 0, &[])));
        harness.ingress(&Ipv4::new(A4, B4, UDP).frame(&udp(40_002, 5353, &[5; 30])));
        harness.ingress(&tcp_query);
        harness.ingress(&answer);
        let after = flow_model::record::MonotonicClock::monotonic_now_ns();
        let mut frames = Vec::new();
        harness.datapath.read_dns_frames(|frame| {
            // Each frame says when it was copied, on the flows' clock (the
            // coarse clock may be a tick behind).
            assert!(
                (before.saturating_sub(COARSE_TICK_NS)..=after).contains(&frame.time_ns),
                "{before} <= {} <= {after}",
                frame.time_ns
            );
            frames.push((frame.bytes.to_vec(), frame.frame_len, frame.direction));
        });
        let copy = |frame: &Vec<u8>| (frame.clone(), frame.len(), Some(Direction::Ingress));
        assert_eq!(frames, [copy(&query), copy(&tcp_query), copy(&answer)]);
        harness.assert_counters(&[(Counter::DnsCopied, 3)]);
    }
}

#[test]
fn a_frame_longer_than_the_copy_is_copied_up_to_it_and_says_its_length() {
    require_root!();
    let long = Ipv4::new(B4, A4, UDP).frame(&udp(53, 40_000, &[3; 1_600]));
    let mut harness = Harness::new();
    harness.ingress(&long);
    let mut frames = Vec::new();
    harness.datapath.read_dns_frames(|frame| {
        frames.push((frame.bytes.to_vec(), frame.frame_len));
    });
    assert_eq!(
        frames,
        [(long[..flow_common::DNS_COPY_BYTES].to_vec(), long.len())]
    );
}

#[test]
fn full_map_and_full_ring_buffer_count_lost_packets() {
    require_root!();
    on_one_cpu();
    let mut harness = Harness::with(DatapathConfig {
        map_entries: 1,
        spill_bytes: 4096,
        ..DatapathConfig::default()
    });
    // 101 flows of one held slot: each moves the one before out of it.
    for port in one_slot_ports(101, 1000, |port| key4(UDP, port, 53)) {
        harness.ingress(&Ipv4::new(A4, B4, UDP).frame(&udp(port, 53, &[0; 10])));
    }
    let samples = harness.drain();
    // The map holds one, a 4 KiB ring 42 records of 96 bytes (88 + an
    // 8-byte header), and the slot the last flow.
    assert_eq!(samples.len(), 1 + 42 + 1);
    harness.assert_counters(&[
        (Counter::Inserted, 1),
        (Counter::MapFull, 99),
        (Counter::Spilled, 42),
        (Counter::Lost, 57),
    ]);
}

#[test]
fn recreated_flow_does_not_inherit_counts_from_another_cpu() {
    require_root!();
    if common::available_cpus() < 2 {
        skip!("needs two CPUs");
    }
    std::thread::spawn(|| {
        let mut harness = Harness::new();
        let frame = Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[0; 10]));
        common::pin_to_cpu(0);
        for _ in 0..3 {
            harness.ingress(&frame);
        }
        common::pin_to_cpu(1);
        for _ in 0..2 {
            harness.ingress(&frame);
        }
        assert_eq!(harness.only_flow().packets, 5);
        // Two drains later the same map is written again; the flow is new on CPU 1
        // only, and CPU 0's slot of the earlier life must not reappear.
        harness.ingress(&frame);
        assert_eq!(harness.only_flow().packets, 1);
        common::pin_to_cpu(0);
        harness.ingress(&frame);
        assert_eq!(harness.only_flow().packets, 1);
    })
    .join()
    .unwrap();
}

/// Older kernels (before 5.10) leave a reused per-CPU element's other slots as
/// they were. Simulate that by planting a slot from an earlier epoch and check
/// both defences: the program resets such a slot before adding to it, and the
/// drain ignores one the program never touched.
#[test]
fn stale_per_cpu_slots_from_an_earlier_epoch_are_reset_and_ignored() {
    require_root!();
    if common::available_cpus() < 2 {
        skip!("needs two CPUs");
    }
    std::thread::spawn(|| {
        use aya::{
            Ebpf,
            maps::{PerCpuHashMap, PerCpuValues},
            programs::SchedClassifier,
            util::nr_cpus,
        };
        use flow_common::FlowStats;

        let mut ebpf = Ebpf::load(flow_agent::datapath::EBPF_OBJECT).unwrap();
        let program: &mut SchedClassifier = ebpf
            .program_mut(flow_common::PROGRAM_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        program.load().unwrap();
        let key = key4(UDP, 5000, 53);
        let stale = FlowStats {
            packets: 99,
            bytes: 9900,
            epoch: 7, // not the current epoch (0)
            ..FlowStats::default()
        };
        let cpus = nr_cpus().unwrap();
        let mut flows: PerCpuHashMap<_, FlowKey, FlowStats> =
            PerCpuHashMap::try_from(ebpf.map_mut(flow_common::FLOWS_EVEN).unwrap()).unwrap();
        flows
            .insert(key, PerCpuValues::try_from(vec![stale; cpus]).unwrap(), 0)
            .unwrap();

        common::pin_to_cpu(1);
        let program: &mut SchedClassifier = ebpf
            .program_mut(flow_common::PROGRAM_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        // The flow's packet, then one of a flow of the same held slot, which
        // moves the first into the map.
        let [port, next] = one_slot_ports(2, 5000, |port| key4(UDP, port, 53))
            .try_into()
            .unwrap();
        assert_eq!(port, 5000);
        for port in [port, next] {
            let frame = Ipv4::new(A4, B4, UDP).frame(&udp(port, 53, &[0; 10]));
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::new()
                })
                .unwrap();
            assert_eq!(result.return_value, PASS);
        }

        let flows: PerCpuHashMap<_, FlowKey, FlowStats> =
            PerCpuHashMap::try_from(ebpf.map(flow_common::FLOWS_EVEN).unwrap()).unwrap();
        let slots = flows.get(&key, 0).unwrap();
        // The program reset CPU 1's stale slot before counting into it.
        assert_eq!(
            (slots[1].packets, slots[1].bytes, slots[1].epoch),
            (1, 38, 0)
        );
        // The drain logic takes CPU 1's slot and skips the untouched stale ones.
        let mut drained = flow_agent::drain::DrainedFlows::default();
        drained.add_slots(key, &slots, 0);
        assert_eq!(drained.stale_slots(), cpus as u64 - 1);
        let samples = drained.into_samples();
        assert_eq!((samples[0].packets, samples[0].bytes), (1, 38));
    })
    .join()
    .unwrap();
}

#[test]
fn drop_all_testkit_program_really_drops() {
    // Guards the TCX ordering test in agent.rs: it relies on this program's verdict.
    require_root!();
    use aya::{Ebpf, programs::SchedClassifier};
    let mut ebpf = Ebpf::load(flow_agent::datapath::TESTKIT_OBJECT).unwrap();
    let program: &mut SchedClassifier = ebpf.program_mut("drop_all").unwrap().try_into().unwrap();
    program.load().unwrap();
    let frame = packet::Ipv4::new(A4, B4, UDP).frame(&udp(1, 2, &[]));
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        })
        .unwrap();
    assert_eq!(result.return_value, 2, "TC_ACT_SHOT");
}

#[test]
fn an_almost_empty_drain_moves_out_just_the_listed_keys_and_a_busy_one_walks() {
    use flow_agent::datapath::DrainStrategy;
    require_root!();
    on_one_cpu();
    let mut harness = Harness::new();
    // `count` + 1 flows of one held slot: `count` of them reach the map,
    // the last is still held at the drain.
    let frames = |count: usize, first_port: u16| -> Vec<Vec<u8>> {
        one_slot_ports(count + 1, first_port, |port| key4(UDP, port, 53))
            .into_iter()
            .map(|port| Ipv4::new(A4, B4, UDP).frame(&udp(port, 53, &[1; 8])))
            .collect()
    };
    let mut run_all = |frames: &[Vec<u8>]| {
        for frame in frames {
            harness.ingress(frame);
        }
        let samples = harness.drain();
        (samples, harness.datapath.last_drain())
    };
    // The first drain of each map walks it: an earlier agent's pinned map
    // could hold flows no record lists.
    let (samples, strategy) = run_all(&frames(2, 1000));
    assert_eq!((samples.len(), strategy), (3, DrainStrategy::Walked));
    let (samples, _) = run_all(&frames(3, 2000));
    assert_eq!(samples.len(), 4);
    // From then on a few new flows, and flows that existed before in the
    // other epoch too, are moved out by their keys.
    let (samples, strategy) = run_all(&frames(3, 3000));
    assert_eq!((samples.len(), strategy), (4, DrainStrategy::Keyed(3)));
    let (samples, strategy) = run_all(&[]);
    assert_eq!((samples.len(), strategy), (0, DrainStrategy::Keyed(0)));
    // More new flows than a keyed drain takes: the map is walked, and every
    // flow is there, counted once.
    let many = frames(1_100, 10_000);
    let (samples, strategy) = run_all(&many);
    assert_eq!((samples.len(), strategy), (1_101, DrainStrategy::Walked));
    assert!(samples.iter().all(|sample| sample.packets == 1));
    // One CPU's log holds 512 keys: with them all from one CPU the drain is
    // keyed; one more and that log overflows, and the map is walked.
    let (samples, strategy) = run_all(&frames(512, 20_000));
    assert_eq!((samples.len(), strategy), (513, DrainStrategy::Keyed(512)));
    let (samples, strategy) = run_all(&frames(513, 30_000));
    assert_eq!((samples.len(), strategy), (514, DrainStrategy::Walked));
    assert!(samples.iter().all(|sample| sample.packets == 1));
    // And the next almost empty drain of that map is keyed again.
    let _ = run_all(&frames(1, 40_000));
    let (samples, strategy) = run_all(&frames(2, 41_000));
    assert_eq!((samples.len(), strategy), (3, DrainStrategy::Keyed(2)));
}

/// `count` ports from `first` whose flows (`key` of each port) share one
/// held slot (see [`flow_common::HeldFlows`]): each flow's first packet on a
/// CPU moves the flow before it out of the slot, into the map.
fn one_slot_ports(count: usize, first: u16, key: impl Fn(u16) -> FlowKey) -> Vec<u16> {
    let slot = |port| flow_common::HeldFlows::slot_of(&key(port));
    let ports: Vec<u16> = (first..)
        .filter(|&port| slot(port) == slot(first))
        .take(count)
        .collect();
    assert_eq!(ports.len(), count, "not enough ports from {first}");
    ports
}

/// Keeps the calling thread on the CPU it runs on, so that every
/// BPF_PROG_TEST_RUN after this writes that CPU's per-CPU slots.
fn on_one_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is zeroed, then
    // filled by CPU_SET, and outlives the call that reads it.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// A router between the pods, which sends time exceeded and packet too big.
const ROUTER4: [u8; 4] = [10, 0, 0, 1];
const ROUTER6: &str = "fd00::1";

/// The reply direction of `key`: what an error quoting `key`'s packet is
/// counted under.
fn reply(key: FlowKey) -> FlowKey {
    FlowKey {
        src_addr: key.dst_addr,
        dst_addr: key.src_addr,
        src_port: key.dst_port,
        dst_port: key.src_port,
        ..key
    }
}

/// The flow of `key` in `samples`, which must be there.
fn flow_of(samples: &[FlowSample], key: FlowKey) -> FlowSample {
    *samples
        .iter()
        .find(|sample| sample.key == key)
        .unwrap_or_else(|| panic!("no flow {key:?} in {samples:#?}"))
}

#[test]
fn icmp_errors_are_counted_with_the_connection_they_quote() {
    use flow_common::icmp_error::{PACKET_TOO_BIG, TIME_EXCEEDED, UNREACHABLE};
    require_root!();
    for config in both_readers() {
        let mut harness = Harness::with(config);
        // A UDP query to a closed port, twice, each answered by a port
        // unreachable that quotes it whole.
        let query4 = Ipv4::new(A4, B4, UDP).build(&udp(5000, 53, &[7; 20]));
        let unreachable4 = Ipv4::new(B4, A4, ICMP).frame(&icmp(3, 3, &query4));
        // A TCP SYN with IP options whose TTL runs out at the router: the
        // quote is its IP header (IHL 7) and 8 bytes of TCP.
        let mut syn = Ipv4::new(A4, B4, TCP);
        syn.options = vec![7, 7, 4, 0, 0, 0, 0, 1];
        let syn = syn.build(&tcp(40000, 80, SYN, 0, &[]));
        let time_exceeded4 = Ipv4::new(ROUTER4, A4, ICMP).frame(&icmp(11, 0, &syn[..28 + 8]));
        // An echo request to an unreachable host.
        let echo = Ipv4::new(A4, B4, ICMP).build(&icmp(8, 0, &[0; 56]));
        let host_unreachable4 = Ipv4::new(B4, A4, ICMP).frame(&icmp(3, 1, &echo));
        for _ in 0..2 {
            harness.ingress(&Ipv4::new(A4, B4, UDP).frame(&udp(5000, 53, &[7; 20])));
            harness.ingress(&unreachable4);
        }
        harness.ingress(&time_exceeded4);
        harness.ingress(&host_unreachable4);

        // IPv6: a port unreachable, and a packet too big from the router.
        let query6 = Ipv6::new(A6, B6, UDP).build(&udp(5000, 53, &[7; 20]));
        harness.ingress(&Ipv6::new(B6, A6, ICMPV6).frame(&icmp(1, 4, &query6)));
        let segment = Ipv6::new(A6, B6, TCP).build(&tcp(40000, 443, ACK, 0, &[1; 1400]));
        harness.ingress(&Ipv6::new(ROUTER6, A6, ICMPV6).frame(&icmp(2, 0, &segment[..1232])));

        let samples = harness.drain();
        assert_eq!(samples.len(), 6, "{samples:#?}");
        let query = flow_of(&samples, key4(UDP, 5000, 53));
        assert_eq!(
            (query.packets, query.icmp_errors, query.icmp_error_kinds),
            (2, 0, 0)
        );
        let errors = [
            // (flow, bytes of one error, kind)
            (reply(key4(UDP, 5000, 53)), 2, 20 + 8 + 48, UNREACHABLE),
            (reply(key4(TCP, 40000, 80)), 1, 20 + 8 + 36, TIME_EXCEEDED),
            (
                FlowKey {
                    icmp_type: 0,
                    ..reply(key4(ICMP, 0, 0))
                },
                1,
                20 + 8 + 84,
                UNREACHABLE,
            ),
            (reply(key6(UDP, 5000, 53)), 1, 40 + 8 + 68, UNREACHABLE),
            (
                reply(key6(TCP, 40000, 443)),
                1,
                40 + 8 + 1232,
                PACKET_TOO_BIG,
            ),
        ];
        for (key, packets, bytes, kind) in errors {
            let flow = flow_of(&samples, key);
            assert_eq!(
                (
                    flow.packets,
                    flow.bytes,
                    flow.icmp_errors,
                    flow.icmp_error_kinds
                ),
                (packets, packets * bytes, packets, kind),
                "{key:?}"
            );
            assert_eq!(flow.tcp_flags, 0, "an error carries no TCP flags");
        }
        // Nothing else was counted: no packet was malformed, lost or
        // spilled (how many flows reached the map depends on the CPUs the
        // thread ran on, see `HeldFlows`).
        harness.assert_counters(&[]);
    }
}

#[test]
fn icmp_errors_with_unreadable_quotes_keep_their_icmp_key() {
    use flow_common::icmp_error::{PARAMETER_PROBLEM, UNREACHABLE};
    require_root!();
    let query4 = Ipv4::new(A4, B4, UDP).build(&udp(5000, 53, &[7; 20]));
    let mut later_fragment = Ipv4::new(A4, B4, UDP);
    later_fragment.fragment_offset = 10;
    let mut long_options = Ipv4::new(A4, B4, UDP);
    long_options.ihl = Some(15);
    let mut hop_by_hop = Ipv6::new(A6, B6, UDP);
    hop_by_hop.extensions = vec![Extension::HopByHop(0)];
    let query6 = Ipv6::new(A6, B6, UDP).build(&udp(5000, 53, &[7; 20]));
    let cases: [(&str, bool, Vec<u8>); 9] = [
        ("no quote", false, Vec::new()),
        ("half an ip header", false, query4[..10].to_vec()),
        ("4 bytes of udp", false, query4[..24].to_vec()),
        ("a later fragment", false, later_fragment.build(&[7; 8])),
        (
            "options beyond the quote",
            false,
            long_options.build(&udp(5000, 53, &[])),
        ),
        ("gre", false, Ipv4::new(A4, B4, 47).build(&[0; 8])),
        ("an ipv6 header", false, query6.clone()),
        (
            "an extension header",
            true,
            hop_by_hop.build(&udp(5000, 53, &[7; 20])),
        ),
        ("7 bytes of udp", true, query6[..47].to_vec()),
    ];
    for config in both_readers() {
        let mut harness = Harness::with(config);
        for (case, is_v6, quote) in &cases {
            let (frame, key, bytes) = if *is_v6 {
                let message = icmp(4, 0, quote);
                let bytes = 40 + message.len() as u64;
                let frame = Ipv6::new(B6, A6, ICMPV6).frame(&message);
                (frame, reply(key6(ICMPV6, 0, 0)), bytes)
            } else {
                let message = icmp(3, 3, quote);
                let bytes = 20 + message.len() as u64;
                let frame = Ipv4::new(B4, A4, ICMP).frame(&message);
                (frame, reply(key4(ICMP, 0, 0)), bytes)
            };
            harness.ingress(&frame);
            let flow = harness.only_flow();
            let (icmp_type, icmp_code, kind) = if *is_v6 {
                (4, 0, PARAMETER_PROBLEM)
            } else {
                (3, 3, UNREACHABLE)
            };
            assert_eq!(
                flow.key,
                FlowKey {
                    icmp_type,
                    icmp_code,
                    ..key
                },
                "{case}"
            );
            assert_eq!(
                (
                    flow.packets,
                    flow.bytes,
                    flow.icmp_errors,
                    flow.icmp_error_kinds
                ),
                (1, bytes, 1, kind),
                "{case}"
            );
        }
        // An ICMP header of 4 bytes: still an error, with nothing to quote.
        harness.ingress(&Ipv4::new(B4, A4, ICMP).frame(&[3, 3, 0, 0]));
        let flow = harness.only_flow();
        assert_eq!(
            (flow.key.icmp_type, flow.bytes, flow.icmp_errors),
            (3, 24, 1)
        );
        // Nothing was malformed, and each case's flow was held until its
        // drain, never put in the map.
        harness.assert_counters(&[(Counter::Inserted, 0)]);
    }
}
