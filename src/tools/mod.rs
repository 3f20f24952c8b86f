//! Command-line tools beside the product: `metrics parse`, `demo`, `bench`.

pub mod bench;
pub mod board;
pub mod cpbench;
pub mod demo;
pub mod loadgen;
pub mod parse;
