use std::path::PathBuf;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::Value;

use crate::cli::ClientArgs;

/// The data dir used when neither `--data-dir` nor `STRATUS_DATA_DIR` is given:
/// `$XDG_DATA_HOME/stratus`, else `~/.local/share/stratus`, else `./.stratus`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("stratus");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/stratus");
    }
    PathBuf::from(".stratus")
}

pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone)]
pub struct Connection {
    pub base: String,
    pub token: Option<String>,
}

impl Connection {
    pub fn resolve(args: &ClientArgs) -> Result<Self> {
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => {
                let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
                std::fs::read_to_string(dir.join(TOKEN_FILE))
                    .ok()
                    .map(|t| t.trim().to_string())
            }
        };
        Ok(Self {
            base: args.api.trim_end_matches('/').to_string(),
            token,
        })
    }
}

/// An error the API answered with.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
impl std::error::Error for ApiFailure {}

/// Cannot talk to the API at all.
#[derive(Debug)]
pub struct Unreachable(pub String);
impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Unreachable {}

/// Bad input found on this side (flags, manifest).
#[derive(Debug)]
pub struct InvalidInput(pub String);
impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for InvalidInput {}

/// The documented exit code for an error (see main.rs).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<ApiFailure>() {
            return match f.status {
                401 | 403 => 6,
                404 => 3,
                409 => 4,
                400 | 413 => 2,
                _ => 1,
            };
        }
        if cause.downcast_ref::<Unreachable>().is_some() {
            return 5;
        }
        if cause.downcast_ref::<InvalidInput>().is_some() {
            return 2;
        }
    }
    1
}

pub struct Client {
    conn: Connection,
    http: reqwest::Client,
}

impl Client {
    pub fn new(conn: Connection) -> Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self { conn, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.conn.base)
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.conn.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        Unreachable(format!("cannot reach the Stratus API at {}: {e}; is `stratus serve` running? (set --api or STRATUS_API)", self.conn.base)).into()
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = self.auth(r).send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<Value>(&text) {
            Ok(v) => (
                v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                v["error"]["message"].as_str().unwrap_or(&text).to_string(),
            ),
            Err(_) => ("http_error".to_string(), format!("HTTP {status}: {text}")),
        };
        Err(ApiFailure {
            status,
            code,
            message,
        }
        .into())
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<Value> {
        let resp = self.send(r).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        resp.json()
            .await
            .context("the API answered with invalid JSON")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.http.get(self.url(path))).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn json_post(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Result<Value> {
        self.json(self.http.post(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.json(self.http.delete(self.url(path))).await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn stream_logs(
        &self,
        name: &str,
        query: &[(&str, String)],
        json: bool,
    ) -> Result<()> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/functions/{name}/logs")))
                    .query(query),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the log stream broke off")?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if json {
                    print!("{text}");
                } else if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    println!("{}", crate::output::log_line(&v));
                }
            }
        }
        Ok(())
    }
}
