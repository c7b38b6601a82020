//! Flow records as JSON lines, written directly: byte for byte what
//! serde_json writes for [`FlowRecord`]'s `Serialize` (the format is a public
//! interface), in a fraction of the time. Through serde, printing a large
//! drain cost about as much as building its records: every key and string
//! went through the escaper and every endpoint through a flattened map.
//!
//! Most of a record repeats: an identity is shared by all records of its
//! pod ([`Endpoint::identity`] is an `Arc`), so its fields are written once
//! per batch and copied after that, and times of one minute share their
//! date, hour and minute, formatted once. A record with a time that
//! `humantime` cannot format (before 1970, after 9999) goes through
//! serde_json, which fails as it always did.

use std::{
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hashbrown::HashMap;

use flow_model::{
    identity::{Identity, ServiceRef, Workload},
    record::{Endpoint, FlowRecord, Hook, Icmp, IcmpErrors, Protocol, Timestamp},
};

/// The first second `humantime` cannot format: year 10000.
const UNFORMATTED_SECONDS: u64 = 253_402_300_800;

/// `YYYY-MM-DDTHH:MM:`, the part of an RFC 3339 time a minute shares.
const MINUTE_PREFIX: usize = 17;

/// Writes flow records as JSON lines, keeping what repeats from one record
/// to the next.
#[derive(Debug, Default)]
pub(super) struct FlowLines {
    /// Each identity's fields as they follow an endpoint's port, by the
    /// address of its shared copy; the `Arc` kept here keeps that address
    /// from being reused while it is cached.
    identities: HashMap<usize, (Arc<Identity>, Range<usize>)>,
    /// The text of those fields, one identity after the other.
    identity_text: Vec<u8>,
    /// The minute last written (seconds since the epoch / 60) and its
    /// `YYYY-MM-DDTHH:MM:`.
    minute: Option<(u64, [u8; MINUTE_PREFIX])>,
}

impl FlowLines {
    /// Appends `records` to `out`, a line each.
    pub(super) fn write(&mut self, records: &[FlowRecord], out: &mut Vec<u8>) -> io::Result<()> {
        for record in records {
            self.record(record, out)?;
        }
        Ok(())
    }

    /// Lets go of the identities kept since the last call: call it after a
    /// batch, so that identities the cache has forgotten are freed.
    pub(super) fn forget(&mut self) {
        self.identities.clear();
        self.identity_text.clear();
    }

    fn record(&mut self, record: &FlowRecord, out: &mut Vec<u8>) -> io::Result<()> {
        let (Some(time), Some(first_seen)) = (
            self.timestamp(record.time),
            self.timestamp(record.first_seen),
        ) else {
            serde_json::to_writer(&mut *out, record)?;
            out.push(b'\n');
            return Ok(());
        };
        let FlowRecord {
            time: _,
            first_seen: _,
            source,
            destination,
            protocol,
            icmp,
            packets,
            bytes,
            tcp_flags,
            icmp_errors,
            is_reply,
            interface,
            interface_index,
            hook,
            node,
            cross_tenant,
            new_connection,
            violation,
        } = record;
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(&time);
        out.extend_from_slice(b"\",\"first_seen\":\"");
        out.extend_from_slice(&first_seen);
        out.extend_from_slice(b"\",\"source\":");
        self.endpoint(source, out);
        out.extend_from_slice(b",\"destination\":");
        self.endpoint(destination, out);
        out.extend_from_slice(b",\"protocol\":");
        write_protocol(*protocol, out);
        if let Some(Icmp { icmp_type, code }) = icmp {
            out.extend_from_slice(b",\"icmp\":{\"type\":");
            write_integer(*icmp_type, out);
            out.extend_from_slice(b",\"code\":");
            write_integer(*code, out);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"packets\":");
        write_integer(*packets, out);
        out.extend_from_slice(b",\"bytes\":");
        write_integer(*bytes, out);
        write_tcp_flags(tcp_flags, out);
        if let Some(IcmpErrors { packets, kinds }) = icmp_errors {
            out.extend_from_slice(b",\"icmp_errors\":{\"packets\":");
            write_integer(*packets, out);
            out.extend_from_slice(b",\"kinds\":");
            write_strings(kinds, out);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"is_reply\":");
        write_bool(*is_reply, out);
        out.extend_from_slice(b",\"interface\":");
        write_string(interface, out);
        out.extend_from_slice(b",\"interface_index\":");
        write_integer(*interface_index, out);
        out.extend_from_slice(match hook {
            Hook::Ingress => b",\"hook\":\"ingress\"",
            Hook::Egress => b",\"hook\":\"egress\"",
        });
        out.extend_from_slice(b",\"node\":");
        write_string(node, out);
        if let Some(cross_tenant) = cross_tenant {
            out.extend_from_slice(b",\"cross_tenant\":");
            write_bool(*cross_tenant, out);
        }
        if *new_connection {
            out.extend_from_slice(b",\"new_connection\":true");
        }
        if *violation {
            out.extend_from_slice(b",\"violation\":true");
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    /// `{"ip":...,"port":...,<identity>,"service":...}`.
    fn endpoint(&mut self, endpoint: &Endpoint, out: &mut Vec<u8>) {
        let Endpoint {
            ip,
            port,
            identity,
            service,
            names,
        } = endpoint;
        out.extend_from_slice(b"{\"ip\":\"");
        write_ip(*ip, out);
        out.extend_from_slice(b"\",\"port\":");
        write_integer(*port, out);
        out.extend_from_slice(self.identity_fields(identity));
        if let Some(service) = service {
            write_service(service, out);
        }
        write_listed(b",\"names\":", names, out);
        out.push(b'}');
    }

    /// An identity's fields, each after a comma, written the first time it
    /// is seen.
    fn identity_fields(&mut self, identity: &Arc<Identity>) -> &[u8] {
        let Self {
            identities,
            identity_text,
            ..
        } = self;
        let (_, range) = identities
            .entry(Arc::as_ptr(identity) as usize)
            .or_insert_with(|| {
                let start = identity_text.len();
                write_identity(identity, identity_text);
                (Arc::clone(identity), start..identity_text.len())
            });
        &identity_text[range.clone()]
    }

    /// `time` as `humantime::format_rfc3339_nanos` writes it, or `None`
    /// where that fails (before 1970, after 9999).
    fn timestamp(&mut self, Timestamp(time): Timestamp) -> Option<[u8; 30]> {
        let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        let seconds = since_epoch.as_secs();
        if seconds >= UNFORMATTED_SECONDS {
            return None;
        }
        let minute = seconds / 60;
        let prefix = match self.minute {
            Some((cached, prefix)) if cached == minute => prefix,
            _ => {
                let prefix = minute_prefix(minute)?;
                self.minute = Some((minute, prefix));
                prefix
            }
        };
        let mut text = *b"0000-00-00T00:00:00.000000000Z";
        text[..MINUTE_PREFIX].copy_from_slice(&prefix);
        write_digits(seconds % 60, &mut text[17..19]);
        write_digits(u64::from(since_epoch.subsec_nanos()), &mut text[20..29]);
        Some(text)
    }
}

/// `YYYY-MM-DDTHH:MM:` of a minute since the epoch, as `humantime` writes it.
fn minute_prefix(minute: u64) -> Option<[u8; MINUTE_PREFIX]> {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(minute * 60);
    let mut text = [0u8; 30];
    write!(&mut text[..], "{}", humantime::format_rfc3339_nanos(start)).ok()?;
    text[..MINUTE_PREFIX].try_into().ok()
}

/// `value` in decimal over all of `digits`, zero-padded (the value fits).
fn write_digits(mut value: u64, digits: &mut [u8]) {
    for digit in digits.iter_mut().rev() {
        // Below 10.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// An identity's fields as serde writes them flattened into an endpoint,
/// each after a comma.
fn write_identity(identity: &Identity, out: &mut Vec<u8>) {
    let Identity {
        kind,
        namespace,
        pod,
        workload,
        tenant,
        labels,
        node,
        note,
    } = identity;
    if let Some(kind) = kind {
        out.extend_from_slice(b",\"kind\":");
        write_string(kind.as_str(), out);
    }
    write_optional(b",\"namespace\":", namespace.as_deref(), out);
    write_optional(b",\"pod\":", pod.as_deref(), out);
    if let Some(Workload { kind, name }) = workload {
        out.extend_from_slice(b",\"workload\":{\"kind\":");
        write_string(kind, out);
        out.extend_from_slice(b",\"name\":");
        write_string(name, out);
        out.push(b'}');
    }
    write_optional(b",\"tenant\":", tenant.as_deref(), out);
    if !labels.is_empty() {
        out.extend_from_slice(b",\"labels\":");
        let mut separator = b'{';
        for (key, value) in labels {
            out.push(separator);
            write_string(key, out);
            out.push(b':');
            write_string(value, out);
            separator = b',';
        }
        out.push(b'}');
    }
    write_optional(b",\"node\":", node.as_deref(), out);
    write_optional(b",\"note\":", note.as_deref(), out);
}

/// `,"service":{...}`.
fn write_service(service: &ServiceRef, out: &mut Vec<u8>) {
    let ServiceRef {
        namespace,
        name,
        ip,
        port,
        target_port,
    } = service;
    out.extend_from_slice(b",\"service\":{\"namespace\":");
    write_string(namespace, out);
    out.extend_from_slice(b",\"name\":");
    write_string(name, out);
    out.extend_from_slice(b",\"ip\":\"");
    write_ip(*ip, out);
    out.extend_from_slice(b"\",\"port\":");
    write_integer(*port, out);
    if let Some(target_port) = target_port {
        out.extend_from_slice(b",\"target_port\":");
        write_integer(*target_port, out);
    }
    out.push(b'}');
}

/// `key` (with its comma and colon) and the string, when there is one.
fn write_optional(key: &[u8], value: Option<&str>, out: &mut Vec<u8>) {
    if let Some(value) = value {
        out.extend_from_slice(key);
        write_string(value, out);
    }
}

/// `,"tcp_flags":[...]`, unless there are none.
fn write_tcp_flags(flags: &[String], out: &mut Vec<u8>) {
    write_listed(b",\"tcp_flags\":", flags, out);
}

/// `key` and an array of strings, unless there are none.
fn write_listed(key: &[u8], strings: &[impl AsRef<str>], out: &mut Vec<u8>) {
    if strings.is_empty() {
        return;
    }
    out.extend_from_slice(key);
    write_strings(strings, out);
}

/// A JSON array of strings, `[]` when empty.
fn write_strings(strings: &[impl AsRef<str>], out: &mut Vec<u8>) {
    if strings.is_empty() {
        out.extend_from_slice(b"[]");
        return;
    }
    let mut separator = b'[';
    for string in strings {
        out.push(separator);
        write_string(string.as_ref(), out);
        separator = b',';
    }
    out.push(b']');
}

/// The protocol's name, or its number, as a string.
fn write_protocol(protocol: Protocol, out: &mut Vec<u8>) {
    out.push(b'"');
    match protocol.name() {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => write_integer(protocol.0, out),
    }
    out.push(b'"');
}

fn write_bool(value: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn write_integer(value: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// An address as `Display` writes it (unquoted).
fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => write_ipv4(v4, out),
        IpAddr::V6(v6) => write_ipv6(v6, out),
    }
}

fn write_ipv4(ip: Ipv4Addr, out: &mut Vec<u8>) {
    let [a, b, c, d] = ip.octets();
    write_integer(a, out);
    for octet in [b, c, d] {
        out.push(b'.');
        write_integer(octet, out);
    }
}

/// As `Ipv6Addr`'s `Display`: IPv4-mapped addresses in dotted form, else
/// the first longest run of two or more zero groups as `::`.
fn write_ipv6(ip: Ipv6Addr, out: &mut Vec<u8>) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        write_ipv4(v4, out);
        return;
    }
    let groups = ip.segments();
    let mut longest = 0..0;
    let mut run_start = 0;
    for (index, group) in groups.iter().enumerate() {
        if *group != 0 {
            run_start = index + 1;
        } else if index + 1 - run_start > longest.len() {
            longest = run_start..index + 1;
        }
    }
    if longest.len() > 1 {
        write_hex_groups(&groups[..longest.start], out);
        out.extend_from_slice(b"::");
        write_hex_groups(&groups[longest.end..], out);
    } else {
        write_hex_groups(&groups, out);
    }
}

/// Groups in lowercase hexadecimal without leading zeros, between colons.
fn write_hex_groups(groups: &[u16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (index, group) in groups.iter().enumerate() {
        if index > 0 {
            out.push(b':');
        }
        let digits = (16 - group.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            out.push(HEX[usize::from((group >> (4 * shift)) & 0xf)]);
        }
    }
}

/// How serde_json escapes each byte: 0 not at all, `u` as `\u00XX`, else
/// as a backslash and this byte.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// A quoted string, escaped as serde_json escapes it: quotes, backslashes
/// and control characters; everything else (DEL, non-ASCII) as it is.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        match escape {
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
            other => out.extend_from_slice(&[b'\\', other]),
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests;
