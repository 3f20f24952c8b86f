//! Generated code for Switchyard's own control-plane protocol (`switchyard.v1`).
//!
//! The Envoy ext-proc protocol comes pre-generated from the `envoy-types` crate; this crate holds
//! only the messages exchanged between scrapers, the aggregator leader and pickers. It lives in its
//! own crate so that protoc runs, and the generated code compiles, once.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}
