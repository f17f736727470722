//! Captured requests (the manifest's `[capture]`): what `stratus replay` re-sends, and the
//! response it is compared with. Bodies are bytes, carried as base64 in JSON.

use serde::{Deserialize, Serialize};

/// One sampled request and its response, redacted before it was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRecord {
    pub request_id: String,
    pub function: String,
    pub version: u32,
    /// Unix milliseconds when the platform received it.
    pub at_ms: i64,
    pub request: CapturedRequest,
    /// `None` when the platform answered before a function did (the record says why).
    pub response: Option<CapturedResponse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedRequest {
    pub method: String,
    /// Path and query as the client sent them.
    pub uri: String,
    /// Path and query as the function received them (a `/fn/<name>[@target]` prefix stripped).
    pub forward_uri: String,
    pub headers: Vec<(String, String)>,
    pub body: CapturedBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: CapturedBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapturedBody {
    #[serde(rename = "base64", with = "b64")]
    pub bytes: Vec<u8>,
    /// The whole body's size, of which `bytes` is the first `max_body`.
    pub size: u64,
    pub truncated: bool,
    /// Why the bytes were not kept although there were some (a body that had to be redacted
    /// but could not be parsed, for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

impl CaptureRecord {
    /// Bytes this capture holds, for retention by size.
    pub fn stored_bytes(&self) -> u64 {
        let headers = |h: &[(String, String)]| {
            h.iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>()
        };
        let mut n = self.request.body.bytes.len() as u64 + headers(&self.request.headers);
        if let Some(r) = &self.response {
            n += r.body.bytes.len() as u64 + headers(&r.headers);
        }
        n
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
