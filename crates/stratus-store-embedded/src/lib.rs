//! The embedded backends `stratus serve` uses when nothing else is configured: one SQLite file
//! for metadata and logs, and a content-addressed folder of blobs.
#![forbid(unsafe_code)]

mod blobs;
mod sqlite;

pub use blobs::LocalBlobStore;
pub use sqlite::SqliteStore;
