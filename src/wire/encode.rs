//! The leader's updates written straight to protobuf bytes, for the many pickers that receive
//! them. An endpoint's spec (id, address, metrics URL, engine, labels) rarely changes but is most
//! of what converting an endpoint costs (a string per field, a map for the labels); here it is
//! encoded once per endpoint and reused, as bytes, until the endpoint changes. The bytes decode to
//! exactly the message `snapshot_to_proto` / `snapshot_delta_to_proto` build (a message is a
//! sequence of fields; the spec is one of an endpoint's fields, the endpoints are repeated fields
//! of the update), which the tests check.

use std::collections::HashMap;

use bytes::{BufMut as _, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::{
    RoutedBlocks, Snapshot, delta_changes, delta_header, endpoint_state_without_spec, endpoint_to_proto, full_header,
};
use crate::model::{Endpoint, EndpointId, EndpointState};

/// `SnapshotUpdate.endpoints`.
const UPDATE_ENDPOINTS: u32 = 6;
/// `EndpointState.spec`.
const STATE_SPEC: u32 = 1;

/// Each endpoint's spec, encoded as the `spec` field of its `EndpointState`, with the endpoint it
/// was encoded from (a changed endpoint is encoded again).
#[derive(Debug, Default)]
pub struct SpecCache {
    specs: HashMap<EndpointId, (Endpoint, Bytes)>,
}

impl SpecCache {
    fn spec_field(&mut self, e: &Endpoint) -> Bytes {
        if let Some((held, bytes)) = self.specs.get(&e.id)
            && held == e
        {
            return bytes.clone();
        }
        let spec = endpoint_to_proto(e);
        let mut buf = BytesMut::with_capacity(spec.encoded_len() + 8);
        prost::encoding::message::encode(STATE_SPEC, &spec, &mut buf);
        let bytes = buf.freeze();
        self.specs.insert(e.id.clone(), (e.clone(), bytes.clone()));
        bytes
    }

    /// Lets go of endpoints that left, once they are as many as those that stay.
    fn prune(&mut self, current: &Snapshot) {
        if self.specs.len() > 2 * current.endpoints.len() + 64 {
            let ids: std::collections::HashSet<&EndpointId> =
                current.endpoints.iter().map(|e| &e.endpoint.id).collect();
            self.specs.retain(|id, _| ids.contains(id));
        }
    }
}

/// A full snapshot update, encoded.
pub fn encode_snapshot(s: &Snapshot, cache: &mut SpecCache) -> Bytes {
    let bytes = encode(&full_header(s), s.endpoints.iter(), cache);
    cache.prune(s);
    bytes
}

/// The delta from `base` to `next` ([`super::snapshot_delta_to_proto`], or
/// [`super::snapshot_delta_to_proto_at`] with `positions`), encoded.
pub fn encode_delta(
    base: &Snapshot,
    next: &Snapshot,
    routed: &[RoutedBlocks],
    positions: Option<&[u32]>,
    cache: &mut SpecCache,
) -> Bytes {
    let (endpoints, removed) = delta_changes(base, next, positions);
    let bytes = encode(&delta_header(base, next, routed, removed), endpoints.into_iter(), cache);
    cache.prune(next);
    bytes
}

/// `header` (an update without endpoints) followed by `endpoints`, each with its cached spec.
fn encode<'a>(
    header: &switchyard_proto::v1::SnapshotUpdate,
    endpoints: impl Iterator<Item = &'a EndpointState>,
    cache: &mut SpecCache,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(header.encoded_len() + 256);
    put(header, &mut buf);
    for e in endpoints {
        let spec = cache.spec_field(&e.endpoint);
        let state = endpoint_state_without_spec(e);
        encode_key(UPDATE_ENDPOINTS, WireType::LengthDelimited, &mut buf);
        encode_varint((spec.len() + state.encoded_len()) as u64, &mut buf);
        buf.put_slice(&spec);
        put(&state, &mut buf);
    }
    buf.freeze()
}

/// A message's fields, without a length in front.
fn put(m: &impl Message, buf: &mut BytesMut) {
    buf.reserve(m.encoded_len());
    // A `BytesMut` grows as needed, so there is always room: encoding cannot fail.
    let _ = m.encode(buf);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use switchyard_proto::v1 as pb;

    use super::*;
    use crate::model::{EndpointMetrics, Load, MetricsSample, MetricsState, TraceRef};

    fn state(id: &str, address: &str, queued: Option<u64>, labels: usize) -> EndpointState {
        EndpointState {
            endpoint: Arc::new(Endpoint {
                id: EndpointId::new(id),
                address: address.into(),
                metrics_url: format!("http://{address}/metrics"),
                engine: "vllm".into(),
                labels: (0..labels).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
            }),
            metrics: match queued {
                None => MetricsState::Unknown,
                Some(q) => MetricsState::Known {
                    sample: Arc::new(MetricsSample {
                        metrics: EndpointMetrics {
                            queued: Some(q),
                            running_lora: Some(vec!["a".into()]),
                            waiting_lora: Some(vec![]),
                            ..Default::default()
                        },
                        scraped_at: UNIX_EPOCH + Duration::from_micros(q * 1000),
                        errors: vec!["kv_usage: missing".into()],
                    }),
                    last_error: None,
                },
            },
            shared_load: Load { requests: 1, tokens: 2 },
            shared_sent_since_scrape: 3,
        }
    }

    fn decoded(b: &Bytes) -> pb::SnapshotUpdate {
        pb::SnapshotUpdate::decode(b.clone()).expect("decodes")
    }

    proptest::proptest! {
        /// The bytes decode to the message the conversions build, full or delta, with or without
        /// positions, whatever the cache held before (endpoints that moved, left or came back).
        #[test]
        fn encoded_updates_decode_to_the_converted_messages(
            before in proptest::collection::vec((0usize..8, proptest::option::of(0u64..4), 0usize..3, proptest::bool::ANY), 0..8),
            after in proptest::collection::vec((0usize..8, proptest::option::of(0u64..4), 0usize..3, proptest::bool::ANY), 0..8),
        ) {
            let snap = |entries: &[(usize, Option<u64>, usize, bool)], seq| {
                let mut endpoints: Vec<EndpointState> = entries
                    .iter()
                    .map(|(i, q, labels, moved)| state(&format!("e{i}"), if *moved { "10.0.0.2:80" } else { "10.0.0.1:80" }, *q, *labels))
                    .collect();
                endpoints.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
                endpoints.dedup_by(|a, b| a.endpoint.id == b.endpoint.id);
                Snapshot {
                    epoch: 2,
                    seq,
                    endpoints,
                    published_at: UNIX_EPOCH + Duration::from_secs(seq),
                    routed_blocks: vec![RoutedBlocks { endpoint: EndpointId::new("e1"), hashes: vec![seq, 7] }],
                    objectives: Arc::new([("o".to_string(), seq as i32)].into_iter().collect()),
                    publish_span: Some(TraceRef { trace_id: 5, span_id: seq }),
                }
            };
            let (base, next) = (snap(&before, 1), snap(&after, 2));
            let mut cache = SpecCache::default();
            proptest::prop_assert_eq!(decoded(&encode_snapshot(&base, &mut cache)), super::super::snapshot_to_proto(&base));
            proptest::prop_assert_eq!(decoded(&encode_snapshot(&next, &mut cache)), super::super::snapshot_to_proto(&next));
            let routed = [RoutedBlocks { endpoint: EndpointId::new("e2"), hashes: vec![1] }];
            let want = super::super::snapshot_delta_to_proto(&base, &next, &routed);
            proptest::prop_assert_eq!(decoded(&encode_delta(&base, &next, &routed, None, &mut cache)), want.clone());
            let all: Vec<u32> = (0..next.endpoints.len() as u32).collect();
            proptest::prop_assert_eq!(decoded(&encode_delta(&base, &next, &routed, Some(&all), &mut cache)), want);
        }
    }

    #[test]
    fn a_changed_endpoint_is_encoded_again() {
        let mut cache = SpecCache::default();
        let a = Snapshot { endpoints: vec![state("a", "10.0.0.1:80", Some(1), 2)], ..(*Snapshot::empty()).clone() };
        encode_snapshot(&a, &mut cache);
        let moved = Snapshot { endpoints: vec![state("a", "10.9.9.9:80", Some(1), 2)], ..a.clone() };
        let u = decoded(&encode_snapshot(&moved, &mut cache));
        assert_eq!(u.endpoints[0].spec.as_ref().map(|s| s.address.as_str()), Some("10.9.9.9:80"));
    }
}
