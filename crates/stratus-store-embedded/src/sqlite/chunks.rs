//! Request records packed in chunks: one row per writer batch instead of one row and four index
//! entries per request. A row per record cost the writer ~8 µs a record here (the row alone ~5,
//! each index ~1); encoding a batch into one blob costs a fraction of a microsecond a record,
//! which is what keeps records off the request path's CPU budget.
//!
//! A chunk's row carries what queries skip chunks by (time range, id range, the functions in
//! it, the status classes in it, a Bloom filter of its request and trace ids); the records
//! themselves are decoded only for the chunks a query cannot skip. Strings that repeat within
//! a batch (function, instance, method, path, error) are written once, in a dictionary.

use std::collections::HashMap;

use stratus_store::{RequestRecord, Trigger};

/// The blob's layout version (its first byte).
const FORMAT: u8 = 1;

/// A chunk as its row stores it.
pub(super) struct Chunk {
    pub first_id: i64,
    pub last_id: i64,
    pub n: i64,
    pub min_start_ms: i64,
    pub max_start_ms: i64,
    /// The distinct functions, each between newlines (`\nf\ng\n`), for `instr` matching.
    pub functions: String,
    /// Bit `k` is set when a record's status is in `k`xx.
    pub classes: i64,
    pub bloom: Vec<u8>,
    pub data: Vec<u8>,
}

/// The status classes a range covers, as a mask of [`Chunk::classes`] bits.
pub(super) fn class_mask(min: u16, max: u16) -> i64 {
    (min / 100..=(max / 100).min(62)).fold(0, |m, c| m | 1 << c)
}

fn class_bit(status: u16) -> i64 {
    1 << (status / 100).min(62)
}

/// Packs records whose ids are set and increasing.
pub(super) fn encode(records: &[RequestRecord]) -> Chunk {
    assert!(!records.is_empty(), "a chunk holds at least one record");
    let min_start_ms = records.iter().map(|r| r.start_ms).min().expect("non-empty");
    let max_start_ms = records.iter().map(|r| r.start_ms).max().expect("non-empty");
    let mut dict = Dict::default();
    let mut body = Vec::with_capacity(records.len() * 64);
    let mut functions = String::from("\n");
    // A batch holds a handful of functions: a list beats a set.
    let mut seen: Vec<&str> = Vec::new();
    let mut classes = 0;
    let mut bloom = Bloom::new(records.len() * 2);
    let mut prev = records[0].id - 1;
    for r in records {
        varint(&mut body, (r.id - prev) as u64);
        prev = r.id;
        varint(&mut body, (r.start_ms - min_start_ms) as u64);
        varint(&mut body, r.duration_us);
        varint(&mut body, r.queue_us);
        varint(&mut body, r.init_us.map_or(0, |v| v.saturating_add(1)));
        varint(&mut body, r.status as u64);
        varint(&mut body, r.version as u64);
        varint(&mut body, r.bytes_in);
        varint(&mut body, r.bytes_out);
        raw(&mut body, &r.request_id);
        raw(&mut body, &r.trace_id);
        varint(&mut body, dict.index(&r.function));
        varint(&mut body, dict.index(&r.instance));
        varint(&mut body, dict.index(r.trigger.as_str()));
        varint(&mut body, dict.index(&r.method));
        varint(&mut body, dict.index(&r.path));
        match &r.error {
            None => varint(&mut body, 0),
            Some(e) => {
                body.push(1);
                varint(&mut body, dict.index(e));
            }
        }
        if !seen.contains(&r.function.as_str()) {
            seen.push(&r.function);
            functions.push_str(&r.function);
            functions.push('\n');
        }
        classes |= class_bit(r.status);
        bloom.insert(&r.request_id);
        bloom.insert(&r.trace_id);
    }
    let mut data = Vec::with_capacity(body.len() + dict.strings.len() * 16 + 8);
    data.push(FORMAT);
    varint(&mut data, records.len() as u64);
    varint(&mut data, dict.strings.len() as u64);
    for s in &dict.strings {
        raw(&mut data, s);
    }
    data.extend_from_slice(&body);
    Chunk {
        first_id: records[0].id,
        last_id: records[records.len() - 1].id,
        n: records.len() as i64,
        min_start_ms,
        max_start_ms,
        functions,
        classes,
        bloom: bloom.bits,
        data,
    }
}

/// The strings that repeat within a chunk, each written once.
#[derive(Default)]
struct Dict<'a> {
    index: HashMap<&'a str, u64>,
    strings: Vec<&'a str>,
}

impl<'a> Dict<'a> {
    fn index(&mut self, s: &'a str) -> u64 {
        let next = self.strings.len() as u64;
        let i = *self.index.entry(s).or_insert(next);
        if i == next {
            self.strings.push(s);
        }
        i
    }
}

/// A record as it lies in a chunk: its strings borrowed from the blob, so a query can test it
/// before paying for a [`RequestRecord`] (most records of a chunk a query reads are not kept).
pub(super) struct Raw<'a> {
    pub id: i64,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub function: &'a str,
    pub version: u32,
    pub instance: &'a str,
    pub trigger: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub start_ms: i64,
    pub duration_us: u64,
    pub queue_us: u64,
    pub init_us: Option<u64>,
    pub status: u16,
    pub error: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Raw<'_> {
    pub fn to_record(&self) -> RequestRecord {
        RequestRecord {
            id: self.id,
            request_id: self.request_id.to_string(),
            trace_id: self.trace_id.to_string(),
            function: self.function.to_string(),
            version: self.version,
            instance: self.instance.to_string(),
            trigger: Trigger::parse(self.trigger),
            method: self.method.to_string(),
            path: self.path.to_string(),
            start_ms: self.start_ms,
            duration_us: self.duration_us,
            queue_us: self.queue_us,
            init_us: self.init_us,
            status: self.status,
            error: self.error.map(str::to_string),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }
}

/// Calls `f` with each record of a chunk, oldest first (`first_id` and `min_start_ms` from its
/// row).
pub(super) fn for_each<'a>(
    data: &'a [u8],
    first_id: i64,
    min_start_ms: i64,
    mut f: impl FnMut(Raw<'a>),
) -> Result<(), String> {
    let mut r = Reader { data, at: 0 };
    if r.byte()? != FORMAT {
        return Err(format!("request chunk format {} is not known", data[0]));
    }
    let n = r.varint()? as usize;
    let count = r.varint()? as usize;
    let mut strings = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        strings.push(r.str()?);
    }
    let s = |r: &mut Reader<'a>| -> Result<&'a str, String> {
        let i = r.varint()? as usize;
        strings
            .get(i)
            .copied()
            .ok_or_else(|| format!("request chunk: string {i} of {}", strings.len()))
    };
    let mut id = first_id - 1;
    for _ in 0..n {
        id += r.varint()? as i64;
        let start_ms = min_start_ms + r.varint()? as i64;
        let duration_us = r.varint()?;
        let queue_us = r.varint()?;
        let init_us = r.varint()?.checked_sub(1);
        let status = r.varint()? as u16;
        let version = r.varint()? as u32;
        let bytes_in = r.varint()?;
        let bytes_out = r.varint()?;
        let request_id = r.str()?;
        let trace_id = r.str()?;
        let function = s(&mut r)?;
        let instance = s(&mut r)?;
        let trigger = s(&mut r)?;
        let method = s(&mut r)?;
        let path = s(&mut r)?;
        let error = match r.byte()? {
            0 => None,
            _ => Some(s(&mut r)?),
        };
        f(Raw {
            id,
            request_id,
            trace_id,
            function,
            version,
            instance,
            trigger,
            method,
            path,
            start_ms,
            duration_us,
            queue_us,
            init_us,
            status,
            error,
            bytes_in,
            bytes_out,
        });
    }
    Ok(())
}

/// Unpacks all of a chunk's records.
pub(super) fn decode(
    data: &[u8],
    first_id: i64,
    min_start_ms: i64,
) -> Result<Vec<RequestRecord>, String> {
    let mut out = Vec::new();
    for_each(data, first_id, min_start_ms, |r| out.push(r.to_record()))?;
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn raw(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.data.get(self.at).ok_or("request chunk is cut short")?;
        self.at += 1;
        Ok(b)
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("request chunk: varint too long".into())
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.varint()? as usize;
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or("request chunk is cut short")?;
        let s = std::str::from_utf8(&self.data[self.at..end])
            .map_err(|e| format!("request chunk: {e}"))?;
        self.at = end;
        Ok(s)
    }
}

/// A Bloom filter of a chunk's request and trace ids: ten bits a key and four probes (about 1 %
/// false positives), so finding an id that carries no time looks into few chunks' records.
pub(super) struct Bloom {
    bits: Vec<u8>,
}

const PROBES: u64 = 4;

impl Bloom {
    fn new(keys: usize) -> Self {
        Self {
            bits: vec![0; (keys * 10).div_ceil(8).max(8)],
        }
    }

    fn probes(bits: usize, key: &str) -> impl Iterator<Item = usize> {
        let h = fnv1a(key.as_bytes());
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits as u64) as usize)
    }

    fn insert(&mut self, key: &str) {
        for b in Self::probes(self.bits.len() * 8, key) {
            self.bits[b / 8] |= 1 << (b % 8);
        }
    }

    /// Whether `key` may be in the filter whose bytes are `bits` (an empty filter: maybe).
    pub fn may_contain(bits: &[u8], key: &str) -> bool {
        bits.is_empty()
            || Self::probes(bits.len() * 8, key).all(|b| bits[b / 8] & (1 << (b % 8)) != 0)
    }
}

/// FNV-1a, 64 bits: stable across builds (the filters are stored), unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The millisecond a time-ordered id would carry: a UUIDv7 request id (`xxxxxxxx-xxxx-7…`), or
/// a trace id whose first 48 bits are the time (the roots Stratus starts). `None` for an id
/// that cannot be one. Any other hex id reads as some time too; whether it is the record's
/// (it lies in [`id_window`]) decides how the id is found.
pub(super) fn id_time(id: &str) -> Option<i64> {
    if id.len() == 36 && id.as_bytes().get(14) != Some(&b'7') {
        return None;
    }
    let mut ms: i64 = 0;
    let mut digits = 0;
    for b in id.bytes() {
        if digits == 12 {
            break;
        }
        if b == b'-' {
            continue;
        }
        ms = ms << 4 | (b as char).to_digit(16)? as i64;
        digits += 1;
    }
    (digits == 12).then_some(ms)
}

/// The start times a record found by its time-ordered id can have: the id's time, give or take
/// a minute (ids and starts are taken at the same moment; a caller's id made elsewhere may lie
/// outside, and is then found through every chunk's filter).
pub(super) fn id_window(id: &str) -> Option<(i64, i64)> {
    const SLACK_MS: i64 = 60_000;
    id_time(id).map(|t| (t - SLACK_MS, t + SLACK_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, i: u32) -> RequestRecord {
        RequestRecord {
            id,
            request_id: format!("req-{i}"),
            trace_id: format!("{i:032x}"),
            function: if i.is_multiple_of(3) { "a" } else { "b" }.into(),
            version: i,
            instance: "inst".into(),
            trigger: if i == 2 {
                Trigger::Timer
            } else {
                Trigger::Http
            },
            method: "GET".into(),
            path: format!("/p/{}", i % 2),
            start_ms: 1_000 + (i as i64 * 7) % 50,
            duration_us: u64::MAX - i as u64,
            queue_us: i as u64,
            init_us: match i % 3 {
                0 => None,
                1 => Some(0),
                _ => Some(u64::MAX),
            },
            status: if i.is_multiple_of(4) { 503 } else { 200 },
            error: i.is_multiple_of(4).then(|| "overloaded".into()),
            bytes_in: i as u64 * 1000,
            bytes_out: 0,
        }
    }

    #[test]
    fn records_round_trip_with_gaps_in_their_ids() {
        let records: Vec<_> = [5, 6, 9, 100, 101]
            .iter()
            .enumerate()
            .map(|(i, id)| rec(*id, i as u32))
            .collect();
        let c = encode(&records);
        assert_eq!((c.first_id, c.last_id, c.n), (5, 101, 5));
        assert_eq!((c.min_start_ms, c.max_start_ms), (1_000, 1_028));
        assert_eq!(c.functions, "\na\nb\n");
        assert_eq!(c.classes, 1 << 2 | 1 << 5);
        let got = decode(&c.data, c.first_id, c.min_start_ms).unwrap();
        // `init_us: Some(u64::MAX)` saturates to one below (`0` is "none").
        let mut want = records.clone();
        want[2].init_us = Some(u64::MAX - 1);
        assert_eq!(got, want);
        for r in &records {
            assert!(Bloom::may_contain(&c.bloom, &r.request_id));
            assert!(Bloom::may_contain(&c.bloom, &r.trace_id));
        }
        let misses = (0..1000)
            .filter(|i| Bloom::may_contain(&c.bloom, &format!("other-{i}")))
            .count();
        assert!(misses < 100, "{misses} false positives in 1000");
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let c = encode(&[rec(1, 1), rec(2, 2)]);
        for cut in 0..c.data.len() {
            assert!(decode(&c.data[..cut], 1, 0).is_err(), "cut at {cut}");
        }
        let mut other = c.data.clone();
        other[0] = 9;
        assert!(decode(&other, 1, 0).unwrap_err().contains("format 9"));
    }

    #[test]
    fn time_ordered_ids_give_their_time() {
        let now = 1_767_000_000_000i64;
        let v7 = format!(
            "{:08x}-{:04x}-7abc-8def-0123456789ab",
            now >> 16,
            now & 0xffff
        );
        assert_eq!(id_time(&v7), Some(now));
        let (from, to) = id_window(&v7).unwrap();
        assert!((from..=to).contains(&(now + 60_000)));
        assert!(!(from..=to).contains(&(now + 60_001)), "made long before");
        let v4 = format!(
            "{:08x}-{:04x}-4abc-8def-0123456789ab",
            now >> 16,
            now & 0xffff
        );
        assert_eq!(id_time(&v4), None, "a random UUID carries no time");
        let trace = format!("{now:012x}{:020x}", 42);
        assert_eq!(id_time(&trace), Some(now));
        let (from, to) = id_window(&format!("{:032x}", 3)).unwrap();
        assert!(!(from..=to).contains(&now));
        assert_eq!(id_time("req-1"), None);
        assert_eq!(class_mask(500, 599), 1 << 5);
        assert_eq!(class_mask(400, 599), 1 << 4 | 1 << 5);
    }
}
