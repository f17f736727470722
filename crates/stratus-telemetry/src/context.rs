//! W3C trace context, shared by the gateway (requests) and the event engine (async attempts).

use rand::Rng;

/// A W3C trace context (`traceparent`): version 00, 16-byte trace id, 8-byte parent span id,
/// flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// 16 bytes that sort by creation time: a UUIDv7 (RFC 9562: 48-bit Unix milliseconds, version
/// and variant bits, 74 random bits from the thread-local generator, no syscall). The platform's
/// request, trace and invocation ids are these, so the indexes over them are appended to.
pub fn time_ordered_id() -> [u8; 16] {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let random: [u8; 10] = rand::rng().random();
    *uuid::Builder::from_unix_timestamp_millis(ms, &random)
        .into_uuid()
        .as_bytes()
}

/// [`time_ordered_id`] as 32 lowercase hex digits.
pub fn time_ordered_hex() -> String {
    hex(&time_ordered_id())
}

fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(DIGITS[(x >> 4) as usize] as char);
        out.push(DIGITS[(x & 0xf) as usize] as char);
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    push_hex(&mut s, b);
    s
}

impl TraceContext {
    /// Parses a `traceparent` header; invalid ones (including all-zero ids) are ignored, as the
    /// spec requires.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        if version.len() != 2 || version == "ff" || hex_bytes::<1>(version).is_none() {
            return None;
        }
        let trace_id = hex_bytes::<16>(parts.next()?)?;
        let span_id = hex_bytes::<8>(parts.next()?)?;
        let flags = hex_bytes::<1>(parts.next()?)?[0];
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled, with a time-ordered id ([`time_ordered_id`]): the log store
    /// indexes records by trace id, and ids that grow with time append to that index instead
    /// of dirtying a random page of it per request. The low 8 bytes stay random, which is what
    /// trace-id ratio sampling reads (and W3C level 2's "random" flag asks of the right 7).
    pub fn new_root() -> Self {
        Self {
            trace_id: time_ordered_id(),
            span_id: rand::rng().random(),
            flags: 1,
        }
    }

    /// The same trace with a new span id: what the gateway's own span passes downstream.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: rand::rng().random(),
            flags: self.flags,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` value, written into one 55-byte string (it is built for every request
    /// the gateway forwards).
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_continues_a_trace() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(h).unwrap();
        assert_eq!(t.header(), h);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        assert!(
            c.header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn new_ids_sort_by_time_and_differ() {
        let a = time_ordered_hex();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = time_ordered_hex();
        let c = time_ordered_hex();
        assert!(a < b, "{a} then {b}");
        assert_ne!(b, c);
        assert_eq!(&b[12..13], "7", "UUID version 7");
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = u64::from_str_radix(&c[..12], 16).unwrap();
        assert!(ms - at < 5_000, "the first 48 bits are the time in ms");
        let root = TraceContext::new_root();
        assert!(root.trace_id_hex()[..12] <= TraceContext::new_root().trace_id_hex()[..12]);
    }

    #[test]
    fn rejects_invalid_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(TraceContext::new_root().header().len(), 55);
        assert!(TraceContext::parse(&TraceContext::new_root().header()).is_some());
        // A later version may add fields; its first four are read, and it continues as 00.
        assert_eq!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .map(|t| t.header())
                .as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
