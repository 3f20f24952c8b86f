//! The single integration-test binary: real sockets on 127.0.0.1, real actors, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart;
mod cli;
mod deploy;
mod discovery;
mod envoy;
mod etcd;
mod failover;
mod fuzz;
mod gateway;
mod hostile;
mod hostile_extproc;
mod https_scrape;
mod kube_fake;
mod kubernetes;
mod metrics_names;
mod mtls;
mod picker;
mod routing;
mod scrape;
mod scrapers;
mod shared;
mod sim_api;
mod slow_subscriber;
mod support;
mod traces;
