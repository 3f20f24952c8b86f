//! Kubernetes discovery, the pure half: the InferencePool / InferenceObjective types (`crd`) and
//! the rules that turn a pool and its pods into endpoints (`rules`), the same `Vec<Endpoint>` the
//! static endpoints file produces.
//!
//! Nothing here watches the API server or holds state: the watcher/reflector wiring calls these
//! functions on what its stores hold.

pub mod crd;
pub mod rules;
