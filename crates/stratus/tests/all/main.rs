//! End-to-end tests: the real `stratus` binary, started as a user would start it, driven over
//! HTTP and through its CLI. One test binary (wasmtime's layout) keeps link time down.

mod harness;

mod api;
mod capture;
mod deploy;
mod events;
mod examples;
mod faults;
mod gateway;
mod isolation;
mod lifecycle;
mod limits;
mod observability;
mod scaling;
mod scaling_rules;
mod traffic;
mod wasm;
