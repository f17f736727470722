//! What one request's `Store` holds: its WASI context (env, stdout/stderr into the logs, no
//! files, no sockets), its wasi:http context with the outbound policy, and its memory limiter.

use std::sync::Arc;

use http_body_util::BodyExt;
use stratus_core::HostPattern;
use stratus_runtime::LogSink;
use stratus_store::LogStream;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::output::LogMeta;

pub struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: MemoryLimit,
    pub outbound: Outbound,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Denies `memory.grow` past the function's `limits.memory` by trapping, so the failure is
/// reported as what it is instead of as whatever the guest's allocator does on a null pointer.
pub struct MemoryLimit {
    pub max_bytes: usize,
    /// Set when the limit was hit, for the request's log line.
    pub exceeded: Option<usize>,
}

/// The trap raised when a guest grows past its memory limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the guest asked for {desired} bytes of linear memory, the limit is {limit} bytes (limits.memory)"
)]
pub struct MemoryExceeded {
    pub desired: usize,
    pub limit: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = Some(desired);
            return Err(wasmtime::Error::new(MemoryExceeded {
                desired,
                limit: self.max_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold a pointer per element: a million is 8 MiB, far beyond real guests.
        Ok(desired <= 1_000_000)
    }
}

/// The outbound HTTP policy: `allowed_outbound_hosts`, everything else denied.
pub struct Outbound {
    pub allowed: Arc<Vec<HostPattern>>,
    pub meta: Arc<LogMeta>,
    pub logs: Arc<dyn LogSink>,
}

impl Outbound {
    pub fn permits(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.allowed.iter().any(|p| p.allows(scheme, host, port))
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        if !self.permits(request.uri()) {
            let line = format!(
                "outbound request to {} denied: not in allowed_outbound_hosts",
                request.uri()
            );
            self.logs.emit(self.meta.line(LogStream::Platform, line));
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                resp.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
