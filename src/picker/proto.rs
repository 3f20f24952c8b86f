//! Building ext-proc responses the way Envoy accepts them: header values in `raw_value`, the
//! routing answer in the request-headers response together with `envoy.lb` dynamic metadata,
//! bodies as `streamed_response`.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, Metadata, header_value_option};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingResponse,
    StreamedBodyResponse, TrailersResponse, body_mutation, processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

pub const DESTINATION: &str = "x-gateway-destination-endpoint";
pub const DESTINATION_SUBSET: &str = "x-gateway-destination-endpoint-subset";
pub const DESTINATION_SERVED: &str = "x-gateway-destination-endpoint-served";
pub const LB_NAMESPACE: &str = "envoy.lb";
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
pub const OBJECTIVE: &str = "x-gateway-inference-objective";
pub const MODEL_REWRITE: &str = "x-gateway-model-name-rewrite";
pub const FAIRNESS_ID: &str = "x-gateway-inference-fairness-id";

/// Control headers that must not reach the model server.
pub const CONTROL_HEADERS: [&str; 5] = [DESTINATION_SUBSET, DESTINATION_SERVED, OBJECTIVE, MODEL_REWRITE, FAIRNESS_ID];

/// Body chunks sent back to Envoy are at most this large (as upstream).
pub const BODY_CHUNK: usize = 62_000;

pub fn header(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: String::new(), raw_value: value.to_vec() }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": destination}}`.
pub fn destination_metadata(destination: &str) -> Struct {
    let inner = Struct { fields: [(DESTINATION.to_string(), string_value(destination))].into_iter().collect() };
    Struct {
        fields: [(LB_NAMESPACE.to_string(), Value { kind: Some(Kind::StructValue(inner)) })].into_iter().collect(),
    }
}

pub fn request_headers_response(
    set: Vec<HeaderValueOption>,
    remove: Vec<String>,
    metadata: Option<Struct>,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: set, remove_headers: remove }),
                clear_route_cache: true,
                ..CommonResponse::default()
            }),
        })),
        dynamic_metadata: metadata,
        ..ProcessingResponse::default()
    }
}

pub fn response_headers_response(set: Vec<HeaderValueOption>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: set, remove_headers: Vec::new() }),
                ..CommonResponse::default()
            }),
        })),
        ..ProcessingResponse::default()
    }
}

fn streamed(body: Vec<u8>, end_of_stream: bool) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..StreamedBodyResponse::default()
                })),
            }),
            ..CommonResponse::default()
        }),
    }
}

/// The body as `request_body` (or `response_body`) responses in chunks; `end_of_stream` on the last.
pub fn body_responses(body: &[u8], end_of_stream: bool, request: bool, out: &mut Vec<ProcessingResponse>) {
    let wrap = |b: BodyResponse| ProcessingResponse {
        response: Some(if request { Response::RequestBody(b) } else { Response::ResponseBody(b) }),
        ..ProcessingResponse::default()
    };
    if body.is_empty() {
        out.push(wrap(streamed(Vec::new(), end_of_stream)));
        return;
    }
    let n = body.len().div_ceil(BODY_CHUNK);
    for (i, chunk) in body.chunks(BODY_CHUNK).enumerate() {
        out.push(wrap(streamed(chunk.to_vec(), end_of_stream && i + 1 == n)));
    }
}

pub fn trailers_response(request: bool) -> ProcessingResponse {
    let t = TrailersResponse::default();
    ProcessingResponse {
        response: Some(if request { Response::RequestTrailers(t) } else { Response::ResponseTrailers(t) }),
        ..ProcessingResponse::default()
    }
}

/// Upstream's error format: body `inference error: <Code> - <message>`.
pub fn immediate(status: u16, code: &str, message: &str) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            body: format!("inference error: {code} - {message}").into_bytes(),
            details: message.replace(['\r', '\n'], " "),
            ..ImmediateResponse::default()
        })),
        ..ProcessingResponse::default()
    }
}

/// A string field of a metadata namespace.
pub fn metadata_string<'a>(md: Option<&'a Metadata>, namespace: &str, key: &str) -> Option<&'a str> {
    match md?.filter_metadata.get(namespace)?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The subset hint: `None` when absent, `Some(list)` (possibly empty) when present.
pub fn subset_hint(md: Option<&Metadata>) -> Option<Vec<String>> {
    let value = md?.filter_metadata.get(SUBSET_NAMESPACE)?.fields.get(DESTINATION_SUBSET)?;
    Some(match &value.kind {
        Some(Kind::ListValue(ListValue { values })) => values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(Kind::StringValue(s)) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        _ => Vec::new(),
    })
}
