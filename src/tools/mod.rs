//! Command-line tools beside the product: `metrics parse`, `demo`, `bench`, and the fake
//! Kubernetes API server the tests and benchmarks run discovery against.

pub mod bench;
pub mod board;
pub mod cpbench;
pub mod demo;
pub mod kube_fake;
pub mod load;
pub mod loadgen;
pub mod membench;
pub mod otlp_sink;
pub mod parse;
pub mod procs;
pub mod routing;
pub mod soak;
