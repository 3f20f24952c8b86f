//! Every fuzz target, in the order runs report them.

use super::harness::Target;
use super::{files, http, openai, text, wire};

pub const ALL: &[&Target] = &[
    &text::EXPOSITION,
    &text::NORMALIZE,
    &text::SPEC,
    &openai::REQUEST,
    &openai::RESPONSE,
    &http::RESPONSE,
    &files::CONFIG,
    &files::ENDPOINTS,
    &wire::SNAPSHOT,
    &wire::APPLY,
    &wire::REPORTS,
];
