//! A lab DNS server and client: queries and answers written byte by byte,
//! served over UDP and TCP from a pod, from a fixed zone.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread::JoinHandle,
    time::Duration,
};

use flow_lab::Netns;

/// One answer record: owner, and what it holds.
#[derive(Clone, Debug)]
pub enum Answer {
    /// An A or AAAA record.
    Address(&'static str, IpAddr, u32),
    /// A CNAME record: owner, target, TTL.
    Cname(&'static str, &'static str, u32),
}

/// What the server answers: per question name, the answer section.
pub type Zone = Vec<(&'static str, Vec<Answer>)>;

fn name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
}

/// A query for `qname` of `qtype` (1 A, 28 AAAA).
pub fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(id.to_be_bytes());
    out.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    name(&mut out, qname);
    out.extend(qtype.to_be_bytes());
    out.extend([0, 1]);
    out
}

/// The response to `request` from `zone`: the request's header and question,
/// then the zone's answers for its name (NXDOMAIN when it has none).
pub fn respond(request: &[u8], zone: &Zone) -> Vec<u8> {
    // The question name starts at 12 and ends at its zero label.
    let mut at = 12;
    let mut labels = Vec::new();
    while at < request.len() && request[at] != 0 {
        let len = usize::from(request[at]);
        labels.push(String::from_utf8_lossy(&request[at + 1..at + 1 + len]).into_owned());
        at += 1 + len;
    }
    let question_end = at + 5;
    let qname = labels.join(".");
    let answers = zone
        .iter()
        .find(|(name, _)| *name == qname)
        .map(|(_, answers)| answers.clone());
    let mut out = request[..question_end].to_vec();
    out[2] = 0x81;
    out[3] = if answers.is_some() { 0x80 } else { 0x83 };
    let answers = answers.unwrap_or_default();
    out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for answer in &answers {
        let (owner, rtype, ttl, data) = match answer {
            Answer::Address(owner, IpAddr::V4(v4), ttl) => {
                (owner, 1_u16, ttl, v4.octets().to_vec())
            }
            Answer::Address(owner, IpAddr::V6(v6), ttl) => (owner, 28, ttl, v6.octets().to_vec()),
            Answer::Cname(owner, target, ttl) => {
                let mut data = Vec::new();
                name(&mut data, target);
                (owner, 5, ttl, data)
            }
        };
        name(&mut out, owner);
        out.extend(rtype.to_be_bytes());
        out.extend([0, 1]);
        out.extend(ttl.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    out
}

/// Serves `zone` on port 53 of `netns` (every address, IPv4 and IPv6) for
/// `udp` UDP queries and `tcp` TCP connections of one query each.
pub fn serve(
    netns: &Netns,
    zone: Zone,
    udp: usize,
    tcp: usize,
) -> JoinHandle<flow_lab::Result<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = netns.spawn(move || {
        let udp_socket = UdpSocket::bind("[::]:53").unwrap();
        let tcp_listener = TcpListener::bind("[::]:53").unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 512];
        let (mut udp_left, mut tcp_left) = (udp, tcp);
        udp_socket.set_nonblocking(true).unwrap();
        tcp_listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (udp_left > 0 || tcp_left > 0) && std::time::Instant::now() < deadline {
            if let Ok((len, peer)) = udp_socket.recv_from(&mut buffer) {
                udp_socket
                    .send_to(&respond(&buffer[..len], &zone), peer)
                    .unwrap();
                udp_left -= 1;
            }
            if let Ok((mut stream, _)) = tcp_listener.accept() {
                stream.set_nonblocking(false).unwrap();
                let mut prefix = [0u8; 2];
                stream.read_exact(&mut prefix).unwrap();
                let mut request = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                stream.read_exact(&mut request).unwrap();
                let response = respond(&request, &zone);
                let mut framed = (response.len() as u16).to_be_bytes().to_vec();
                framed.extend(response);
                stream.write_all(&framed).unwrap();
                tcp_left -= 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    ready_rx.recv().unwrap();
    handle
}

/// Asks `server` over UDP from `netns`; returns the answer's length.
pub fn ask_udp(netns: &Netns, server: SocketAddr, query: Vec<u8>) -> usize {
    netns
        .run(move || {
            let bind = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(bind).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            socket.send_to(&query, server).unwrap();
            let mut buffer = [0u8; 512];
            socket.recv_from(&mut buffer).unwrap().0
        })
        .unwrap()
}

/// Asks `server` over TCP from `netns`; returns the answer's length.
pub fn ask_tcp(netns: &Netns, server: SocketAddr, query: Vec<u8>) -> usize {
    netns
        .run(move || {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(3)).unwrap();
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend(query);
            stream.write_all(&framed).unwrap();
            let mut prefix = [0u8; 2];
            stream.read_exact(&mut prefix).unwrap();
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            stream.read_exact(&mut answer).unwrap();
            answer.len()
        })
        .unwrap()
}
