use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::uri::{PathAndQuery, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stratus_runtime::{
    Body, CpuClass, Instance, InstanceHealth, ResourceUsage, RuntimeError, empty_body,
};
use tokio::sync::{Notify, watch};

use crate::confine::Confinement;
use crate::spawn::{OutputTail, RequestScope};

/// A response body that keeps its request marked in flight until it ends.
struct Scoped {
    inner: Body,
    _scope: RequestScope,
}

impl http_body::Body for Scoped {
    type Data = bytes::Bytes;
    type Error = stratus_runtime::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

pub struct ProcessInstance {
    id: String,
    conf: Arc<Confinement>,
    port: u16,
    authority: http::uri::Authority,
    /// Its own connection pool, replaced when it is parked (see `set_cpu_class`).
    client: ArcSwap<Client>,
    health: watch::Receiver<InstanceHealth>,
    exited: Arc<Notify>,
    /// Its output capture, told which requests are in flight.
    tail: OutputTail,
}

impl ProcessInstance {
    pub(crate) fn new(
        id: String,
        conf: Arc<Confinement>,
        port: u16,
        health: watch::Receiver<InstanceHealth>,
        exited: Arc<Notify>,
        tail: OutputTail,
    ) -> Self {
        let authority = format!("127.0.0.1:{port}")
            .parse()
            .expect("valid authority");
        Self {
            id,
            conf,
            port,
            authority,
            client: ArcSwap::from_pointee(client()),
            health,
            exited,
            tail,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance's processes: its cgroup and limits.
    pub fn confinement(&self) -> &Arc<Confinement> {
        &self.conf
    }

    pub(crate) fn memory_limit_mib(&self) -> u64 {
        self.conf.memory_limit() / (1024 * 1024)
    }

    pub(crate) fn health_rx(&self) -> watch::Receiver<InstanceHealth> {
        self.health.clone()
    }

    fn running(&self) -> bool {
        matches!(*self.health.borrow(), InstanceHealth::Running)
    }

    pub(crate) fn kill_now(&self) {
        self.conf.kill_now();
    }

    async fn release(&self) {
        self.conf.release_blocking().await;
    }

    pub(crate) async fn probe(&self, path: &str) -> bool {
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
        else {
            return false;
        };
        let req = http::Request::get(uri)
            .body(empty_body())
            .expect("valid request");
        let sent = self.client.load().request(req);
        match tokio::time::timeout(Duration::from_secs(2), sent).await {
            Ok(Ok(resp)) => resp.status().is_success(),
            _ => false,
        }
    }
}

#[async_trait]
impl Instance for ProcessInstance {
    fn id(&self) -> &str {
        &self.id
    }

    async fn handle(&self, req: http::Request<Body>) -> Result<http::Response<Body>, RuntimeError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| RuntimeError::Upstream(format!("bad upstream uri: {e}")))?;
        // The pooled client speaks HTTP/1.1 to instances whatever the caller used.
        parts.version = http::Version::HTTP_11;
        // Output written while this is the only request in flight is this request's; the scope
        // ends with the response body.
        let scope = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|rid| self.tail.enter(rid));
        let req = http::Request::from_parts(parts, body);
        let sent = self.client.load().request(req);
        match sent.await {
            Ok(resp) => Ok(resp.map(|b| {
                let b = b.map_err(Into::into).boxed_unsync();
                match scope {
                    None => b,
                    Some(scope) => Scoped {
                        inner: b,
                        _scope: scope,
                    }
                    .boxed_unsync(),
                }
            })),
            Err(e) => {
                let why = if self.running() {
                    "connection to the instance failed"
                } else {
                    "the instance exited"
                };
                Err(RuntimeError::Upstream(format!("{why}: {e}")))
            }
        }
    }

    fn health(&self) -> watch::Receiver<InstanceHealth> {
        self.health.clone()
    }

    fn usage(&self) -> Option<ResourceUsage> {
        self.conf.usage()
    }

    fn set_cpu_class(&self, class: CpuClass) -> bool {
        let moved = self.conf.set_cpu_class(class);
        if moved && class == CpuClass::Parked {
            // A frozen server cannot close the connections it keeps alive: its keep-alive timer
            // (node's 5 s) runs out while it is frozen and fires as it thaws, racing the
            // request the gateway sends on one of them. So a parked instance keeps none:
            // dropping the pool closes them, and the next request opens a new one.
            self.client.store(Arc::new(client()));
        }
        moved
    }

    fn cpu_class(&self) -> Option<CpuClass> {
        self.conf.cpu_class()
    }

    async fn stop(&self, grace: Duration) {
        if !self.running() {
            // The leader is gone; make sure nothing it forked outlives it.
            self.release().await;
            return;
        }
        let exited = self.exited.notified();
        self.conf.mark_stopping();
        self.conf.signal(libc::SIGTERM);
        let mut health = self.health.clone();
        let wait = async {
            while matches!(*health.borrow_and_update(), InstanceHealth::Running) {
                if health.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = exited => {}
            _ = tokio::time::sleep(grace) => {}
        }
        // Whatever is left (the leader past its grace, or children it left behind, even outside
        // its process group): everything in the cgroup.
        self.release().await;
    }
}
