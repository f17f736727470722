//! The data plane. One request travels, in order:
//!
//! 1. **identity**: an `x-request-id` (the caller's, if sane, or a new one) and a W3C trace
//!    context (the caller's `traceparent` continued with a new span, or a new trace), so every
//!    later log line and error can name the request;
//! 2. **routing**: `/fn/<name>[@alias|@version]/...` or a manifest route, from the current
//!    routing table (one atomic load);
//! 3. **body limit**: 413 from `Content-Length` up front, or while streaming;
//! 4. **slot**: a lease on one of an instance's `concurrency` slots, starting instances as
//!    needed, within the function's timeout;
//! 5. **proxy**: forwarded with the prefix stripped, hop-by-hop headers removed, `x-forwarded-*`
//!    set, under the remaining timeout (504 past it);
//! 6. **response**: streamed back with the lease held until its body ends, so an instance's slot
//!    is free only when the response really is.
//!
//! Platform errors are JSON `{"error":{"code","message"}}` with a stable code.
#![forbid(unsafe_code)]

mod body;
mod capture;
mod observe;
mod proxy;
mod server;
mod shadow;
mod view;

pub use observe::Observers;
pub use proxy::Gateway;
pub use server::serve;
pub use stratus_telemetry::context::TraceContext;
