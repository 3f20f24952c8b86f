//! The single integration-test binary: real sockets on 127.0.0.1, real actors, the real binary.

mod cli;
mod hostile;
mod scrape;
mod sim_api;
mod support;
