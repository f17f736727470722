//! Shadow traffic: a copy of the request goes to the shadow version; its answer is compared with
//! the primary's and thrown away. The primary path only ever does non-blocking work for it: the
//! request body is teed with `try_send` (a mirror that cannot keep up is abandoned), a mirror
//! needs a free slot of a fixed budget (or it is dropped and counted), and comparing bodies hashes
//! the primary's chunks as they pass.

use std::hash::Hasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use stratus_router::ShadowTarget;
use stratus_runtime::{Body, BoxError};
use stratus_scaler::Fleet;
use stratus_telemetry::stats::ShadowStats;
use tokio::sync::{mpsc, oneshot};

/// The primary's outcome, for the comparison: status, body hash (when compared), latency.
pub type PrimaryOutcome = (u16, Option<u64>, Duration);

#[derive(Debug)]
struct MirrorAborted;
impl std::fmt::Display for MirrorAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mirror could not keep up with the request body")
    }
}
impl std::error::Error for MirrorAborted {}

/// The primary request body, copying each chunk to the mirror if it has room.
pub struct Tee<B> {
    pub inner: B,
    pub tx: Option<mpsc::Sender<Bytes>>,
    pub aborted: Arc<AtomicBool>,
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tx)) = (frame.data_ref(), &self.tx)
                    && tx.try_send(data.clone()).is_err()
                {
                    self.aborted.store(true, Ordering::Relaxed);
                    self.tx = None;
                }
            }
            Poll::Ready(None) => self.tx = None,
            Poll::Ready(Some(Err(_))) => {
                self.aborted.store(true, Ordering::Relaxed);
                self.tx = None;
            }
            Poll::Pending => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The mirror's request body, fed by a [`Tee`].
struct Fed {
    rx: mpsc::Receiver<Bytes>,
    aborted: Arc<AtomicBool>,
}

impl HttpBody for Fed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) if self.aborted.load(Ordering::Relaxed) => {
                Poll::Ready(Some(Err(Box::new(MirrorAborted))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The primary response body, hashed as it streams when the verdict needs it.
pub struct Hashed {
    pub inner: Body,
    pub hasher: Option<std::collections::hash_map::DefaultHasher>,
    pub done: Option<oneshot::Sender<PrimaryOutcome>>,
    pub status: u16,
    pub elapsed: Duration,
}

impl Hashed {
    fn finish(&mut self, complete: bool) {
        let hash = self.hasher.take().filter(|_| complete).map(|h| h.finish());
        if let Some(tx) = self.done.take() {
            let _ = tx.send((self.status, hash, self.elapsed));
        }
    }
}

impl Drop for Hashed {
    fn drop(&mut self) {
        // The client went away mid-body: the status still counts, the body does not.
        self.finish(false);
    }
}

impl HttpBody for Hashed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(h)) = (frame.data_ref(), self.hasher.as_mut()) {
                    h.write(d);
                }
                // hyper stops polling once a body says it has ended, so finish here too.
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            _ => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends the mirror and records the verdict once both sides are known.
#[allow(clippy::too_many_arguments)]
pub async fn run_mirror(
    fleet: Arc<Fleet>,
    target: ShadowTarget,
    parts: Parts,
    body_rx: Option<(mpsc::Receiver<Bytes>, Arc<AtomicBool>)>,
    primary: oneshot::Receiver<PrimaryOutcome>,
    stats: Arc<ShadowStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let spec = &target.version.spec;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.limits.timeout;
    let body: Body = match body_rx {
        Some((rx, aborted)) => Fed { rx, aborted }.boxed_unsync(),
        None => stratus_runtime::empty_body(),
    };
    let req = http::Request::from_parts(parts, body);
    let pool = fleet.pool(spec, target.version.number, &target.version.artifact);
    let mirror = async {
        let lease = pool.acquire(deadline).await.map_err(|e| e.to_string())?;
        let resp = lease
            .instance()
            .handle(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(d) = frame.data_ref() {
                hasher.write(d);
            }
        }
        Ok::<_, String>((status, hasher.finish()))
    };
    let outcome = tokio::time::timeout_at(deadline, mirror).await;
    let (mirror_status, mirror_hash) = match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => {
            tracing::debug!(
                "shadow request to version {} failed: {why}",
                target.version.number
            );
            stats.mirror_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            stats.mirror_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    stats.mirror_latency.record(started.elapsed());
    stats.mirrored.fetch_add(1, Ordering::Relaxed);
    let Ok(Ok((status, hash, elapsed))) =
        tokio::time::timeout(Duration::from_secs(60), primary).await
    else {
        return;
    };
    stats.primary_latency.record(elapsed);
    let counter = if status == mirror_status {
        &stats.status_matches
    } else {
        &stats.status_mismatches
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if target.compare_body
        && let Some(h) = hash
    {
        let counter = if h == mirror_hash {
            &stats.body_matches
        } else {
            &stats.body_mismatches
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
