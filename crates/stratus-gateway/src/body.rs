use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use stratus_runtime::{Body, BoxError};

use crate::capture::BodyCopy;

/// A response body that keeps its instance slot leased until the last frame is sent (or the
/// client goes away and the body is dropped).
pub struct Leased<L> {
    pub inner: Body,
    pub _lease: L,
}

impl<L: Unpin> HttpBody for Leased<L> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the function's limit")
    }
}
impl std::error::Error for BodyTooLarge {}

/// A request body that fails once more than `remaining` bytes have streamed through, and flags
/// it so the gateway answers 413 rather than 502.
pub struct Limited<B> {
    pub inner: B,
    pub remaining: u64,
    pub exceeded: Arc<AtomicBool>,
    /// Bytes passed through so far (for the request record).
    pub counted: Arc<AtomicU64>,
    /// Where the first bytes are copied when the request is captured for replay.
    pub copy: Option<Arc<Mutex<BodyCopy>>>,
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= n;
                    self.counted.fetch_add(n, Ordering::Relaxed);
                    if let Some(c) = &self.copy {
                        c.lock().unwrap_or_else(|p| p.into_inner()).push(data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
