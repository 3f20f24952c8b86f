//! A picker's side of the snapshot stream: an update's bytes decoded with each endpoint's spec
//! looked up by its bytes instead of decoded again.
//!
//! Every update carries the full spec (id, address, metrics URL, engine, labels) of each endpoint
//! it changes, and endpoints change mostly by their metrics: decoding the spec (a string per
//! field, a map for the labels) and freeing it with the snapshot it replaced was most of what a
//! picker spent per update. [`SpecMemo`] keeps the specs a stream has decoded, by their bytes:
//! the same bytes decode to the same endpoint, so a spec seen before is shared (`Arc`) rather
//! than decoded. Everything else in the update is decoded by prost as before; the result is the
//! message prost would decode, with the specs converted ([`DecodedUpdate`]), which the tests
//! check. It does not apply the update (`apply.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint};
use prost::{DecodeError, Message};
use switchyard_proto::v1 as pb;

use super::endpoint_from_proto;
use crate::model::Endpoint;

/// `SnapshotUpdate.endpoints`.
const UPDATE_ENDPOINTS: u32 = 6;
/// `EndpointState.spec`.
const STATE_SPEC: u32 = 1;

/// One endpoint of an update: its spec (`None`: the message had none), and the rest of its state
/// (`spec` left empty).
#[derive(Debug, Clone, PartialEq)]
pub struct WireEndpoint {
    pub spec: Option<Arc<Endpoint>>,
    pub state: pb::EndpointState,
}

/// An update as decoded: the message without its endpoints, and its endpoints in order.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedUpdate {
    pub header: pb::SnapshotUpdate,
    pub endpoints: Vec<WireEndpoint>,
}

/// Why an update's bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeUpdateError {
    #[error(transparent)]
    Prost(#[from] DecodeError),
    #[error("a field is longer than the message holding it")]
    Truncated,
}

impl WireEndpoint {
    fn from_proto(mut state: pb::EndpointState) -> Self {
        WireEndpoint { spec: state.spec.take().map(|s| Arc::new(endpoint_from_proto(s))), state }
    }
}

impl From<pb::SnapshotUpdate> for DecodedUpdate {
    fn from(mut header: pb::SnapshotUpdate) -> Self {
        let endpoints = std::mem::take(&mut header.endpoints).into_iter().map(WireEndpoint::from_proto).collect();
        DecodedUpdate { header, endpoints }
    }
}

/// The specs one stream has decoded, by their bytes. Entries nobody else holds any more (the
/// endpoint left or changed) are dropped from time to time, so it stays within about one and a
/// half times the endpoints held.
///
/// The k-th spec of an update is most often the k-th of the update before (the same endpoints,
/// in id order), so that one is tried first: its bytes are kept one after another with the
/// previous update's, and compared without hashing or a lookup in the map.
#[derive(Debug, Default)]
pub struct SpecMemo {
    specs: HashMap<Box<[u8]>, Arc<Endpoint>>,
    inserted: usize,
    previous: Recent,
    current: Recent,
}

/// The specs of one update, in order, and their bytes one after another.
#[derive(Debug, Default)]
struct Recent {
    bytes: Vec<u8>,
    /// Each spec, with where its bytes end in `bytes`.
    specs: Vec<(usize, Arc<Endpoint>)>,
}

impl Recent {
    fn clear(&mut self) {
        self.bytes.clear();
        self.specs.clear();
    }

    /// The `k`-th spec, if its bytes are `bytes`.
    fn get(&self, k: usize, bytes: &[u8]) -> Option<&Arc<Endpoint>> {
        let (end, spec) = self.specs.get(k)?;
        let start = k.checked_sub(1).map_or(0, |p| self.specs[p].0);
        (self.bytes.get(start..*end) == Some(bytes)).then_some(spec)
    }

    fn push(&mut self, bytes: &[u8], spec: &Arc<Endpoint>) {
        self.bytes.extend_from_slice(bytes);
        self.specs.push((self.bytes.len(), spec.clone()));
    }
}

impl SpecMemo {
    /// The spec of the `k`-th endpoint of the update being decoded.
    fn spec(&mut self, k: usize, bytes: &[u8]) -> Result<Arc<Endpoint>, DecodeError> {
        let e = match self.previous.get(k, bytes) {
            Some(e) => e.clone(),
            None => match self.specs.get(bytes) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(endpoint_from_proto(pb::EndpointSpec::decode(bytes)?));
                    self.specs.insert(bytes.into(), e.clone());
                    self.inserted += 1;
                    e
                }
            },
        };
        self.current.push(bytes, &e);
        Ok(e)
    }

    /// An update is decoded from here.
    fn start(&mut self) {
        self.current.clear();
    }

    /// The update was decoded: its specs are the ones tried first for the next. Lets go of the
    /// specs only this memo holds, once as many were added as half of those kept (amortized O(1)
    /// per spec decoded).
    fn finish(&mut self) {
        std::mem::swap(&mut self.previous, &mut self.current);
        self.current.clear();
        if self.inserted > self.specs.len() / 2 + 64 {
            self.specs.retain(|_, e| Arc::strong_count(e) > 1);
            self.inserted = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// Decodes one `SnapshotUpdate` message (its bytes, as the gRPC frame carries them). Fails
/// exactly where prost's decoding of the message would.
pub fn decode_update(mut buf: &[u8], memo: &mut SpecMemo) -> Result<DecodedUpdate, DecodeUpdateError> {
    let mut header = pb::SnapshotUpdate::default();
    let mut endpoints = Vec::new();
    memo.start();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == UPDATE_ENDPOINTS && wire_type == WireType::LengthDelimited {
            let k = endpoints.len();
            endpoints.push(decode_endpoint(k, delimited(&mut buf)?, memo)?);
        } else {
            header.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    memo.finish();
    Ok(DecodedUpdate { header, endpoints })
}

/// The `k`-th `EndpointState`: the spec through the memo, the other fields by prost.
fn decode_endpoint(k: usize, bytes: &[u8], memo: &mut SpecMemo) -> Result<WireEndpoint, DecodeUpdateError> {
    let mut buf = bytes;
    let mut spec = None;
    let mut state = pb::EndpointState::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == STATE_SPEC && wire_type == WireType::LengthDelimited {
            if spec.is_some() {
                // A repeated message field merges its occurrences: rare enough to leave to prost.
                return Ok(WireEndpoint::from_proto(pb::EndpointState::decode(bytes)?));
            }
            spec = Some(memo.spec(k, delimited(&mut buf)?)?);
        } else {
            state.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(WireEndpoint { spec, state })
}

/// The bytes of a length-delimited field, after its key.
fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeUpdateError> {
    let len = decode_varint(buf)?;
    let len = usize::try_from(len).ok().filter(|&l| l <= buf.len()).ok_or(DecodeUpdateError::Truncated)?;
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

#[cfg(test)]
mod tests;
