//! Kubernetes discovery: the InferencePool / InferenceObjective types (`crd`) and
//! the rules that turn a pool and its pods into endpoints (`rules`), the same `Vec<Endpoint>` the
//! static endpoints file produces.
//!
//! `source`: the watcher → reflector wiring that calls the rules on what its stores hold and
//! publishes the endpoint set; `crd` and `rules` do no I/O.

pub mod crd;
pub mod rules;
mod source;

pub use source::{KubernetesError, KubernetesOptions, PoolRef, client, start, start_with_client};
