//! A guest's stdout and stderr, line by line into the [`LogSink`], as it writes them.
//!
//! The sink never blocks, so the stream is always ready and writes complete at once: a guest
//! that prints cannot stall on its logs. Lines are cut at [`MAX_LINE`] bytes and a request's
//! output at [`MAX_OUTPUT`], so a guest printing in a loop costs bounded memory.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use stratus_core::now_ms;
use stratus_runtime::LogSink;
use stratus_store::{LogLine, LogStream};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

const MAX_LINE: usize = 16 * 1024;
const MAX_OUTPUT: usize = 1024 * 1024;

/// Who wrote a line: the fields every line of one instance shares.
#[derive(Debug, Clone)]
pub struct LogMeta {
    pub function: String,
    pub version: u32,
    pub instance: String,
    /// Set on the per-request copy.
    pub request_id: Option<String>,
}

impl LogMeta {
    pub fn line(&self, stream: LogStream, line: String) -> LogLine {
        LogLine {
            id: 0,
            at: now_ms(),
            function: self.function.clone(),
            version: self.version,
            instance: self.instance.clone(),
            stream,
            line,
            request_id: self.request_id.clone(),
        }
    }
}

/// One stream of one request. Clones share the buffer; the last one to go flushes a partial
/// last line.
#[derive(Clone)]
pub struct LogOutput(Arc<Mutex<Lines>>);

struct Lines {
    buf: Vec<u8>,
    written: usize,
    truncated: bool,
    stream: LogStream,
    meta: Arc<LogMeta>,
    sink: Arc<dyn LogSink>,
}

impl LogOutput {
    pub fn new(stream: LogStream, meta: Arc<LogMeta>, sink: Arc<dyn LogSink>) -> Self {
        Self(Arc::new(Mutex::new(Lines {
            buf: Vec::new(),
            written: 0,
            truncated: false,
            stream,
            meta,
            sink,
        })))
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.write(bytes);
    }
}

impl Lines {
    fn write(&mut self, mut bytes: &[u8]) {
        if self.written >= MAX_OUTPUT {
            if !self.truncated {
                self.truncated = true;
                let note = format!("(output over {MAX_OUTPUT} bytes in one request dropped)");
                self.sink.emit(self.meta.line(LogStream::Platform, note));
            }
            return;
        }
        bytes = &bytes[..bytes.len().min(MAX_OUTPUT - self.written)];
        self.written += bytes.len();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            match chunk.strip_suffix(b"\n") {
                Some(rest) => {
                    self.buf.extend_from_slice(rest);
                    self.emit();
                }
                None => {
                    self.buf.extend_from_slice(chunk);
                    while self.buf.len() >= MAX_LINE {
                        let tail = self.buf.split_off(MAX_LINE);
                        self.emit();
                        self.buf = tail;
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let raw = std::mem::take(&mut self.buf);
        let text = String::from_utf8_lossy(&raw);
        let line = text.strip_suffix('\r').unwrap_or(&text).to_string();
        self.sink.emit(self.meta.line(self.stream, line));
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: the bytes go straight to the non-blocking sink.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    pub struct Collect(pub Mutex<Vec<LogLine>>);

    impl LogSink for Collect {
        fn emit(&self, line: LogLine) {
            self.0.lock().unwrap().push(line);
        }
    }

    fn output(sink: &Arc<Collect>) -> LogOutput {
        let meta = Arc::new(LogMeta {
            function: "f".into(),
            version: 2,
            instance: "i".into(),
            request_id: Some("r-1".into()),
        });
        LogOutput::new(LogStream::Stderr, meta, sink.clone())
    }

    #[test]
    fn splits_lines_and_flushes_the_rest_when_dropped() {
        let sink = Arc::new(Collect::default());
        let out = output(&sink);
        let mut second = out.clone();
        out.write_bytes(b"one\ntw");
        OutputStream::write(&mut second, Bytes::from_static(b"o\r\nthree")).unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 2);
        drop(out);
        drop(second);
        let lines = sink.0.lock().unwrap();
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["one", "two", "three"]);
        assert!(
            lines.iter().all(|l| l.stream == LogStream::Stderr
                && l.version == 2
                && l.request_id.as_deref() == Some("r-1")),
            "every line carries its request's id"
        );
    }

    #[test]
    fn long_lines_and_floods_are_bounded() {
        let sink = Arc::new(Collect::default());
        let out = output(&sink);
        out.write_bytes(&vec![b'x'; MAX_LINE * 2 + 1]);
        assert_eq!(sink.0.lock().unwrap().len(), 2);
        for _ in 0..(MAX_OUTPUT / 1000 + 10) {
            out.write_bytes(&[b'y'; 1000]);
        }
        drop(out);
        let lines = sink.0.lock().unwrap();
        let total: usize = lines
            .iter()
            .filter(|l| l.stream == LogStream::Stderr)
            .map(|l| l.line.len())
            .sum();
        assert_eq!(total, MAX_OUTPUT);
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.stream == LogStream::Platform)
                .count(),
            1
        );
    }
}
