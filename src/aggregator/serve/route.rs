//! The control-plane gRPC service as mounted on the server: `WatchSnapshots` writes the shared,
//! already encoded updates to each stream as they are (gRPC framing around the same bytes: no
//! protobuf encoding and no copy per stream; HTTP/2 sends them from the shared buffer), while
//! `Scrape` and `Report` go to the generated server. The wire format is the generated one: clients
//! use the generated client unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::Stream as _;
use hyper::body::Frame;
use prost::Message as _;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_server::{ControlPlaneServer, SERVICE_NAME};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::ControlPlaneService;
use super::updates::Subscription;

const WATCH_SNAPSHOTS: &str = "/switchyard.v1.ControlPlane/WatchSnapshots";

/// The control-plane service with its `WatchSnapshots` route; mount it with
/// `Server::add_service`.
#[derive(Clone)]
pub struct ControlPlaneRoutes {
    service: Arc<ControlPlaneService>,
    generated: ControlPlaneServer<ControlPlaneService>,
    max_encoding: usize,
}

impl ControlPlaneRoutes {
    /// `max_encoding`: the largest message sent, in bytes (a full snapshot must fit).
    pub fn new(service: ControlPlaneService, max_encoding: usize) -> Self {
        let service = Arc::new(service);
        let generated = ControlPlaneServer::from_arc(service.clone()).max_encoding_message_size(max_encoding);
        ControlPlaneRoutes { service, generated, max_encoding }
    }
}

impl NamedService for ControlPlaneRoutes {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for ControlPlaneRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_SNAPSHOTS {
            return self.generated.call(req);
        }
        let (service, max) = (self.service.clone(), self.max_encoding);
        Box::pin(async move {
            // The request's one message, decoded as tonic does (a compressed one is refused).
            let mut request = Streaming::new_request(RequestCodec, req.into_body(), None, None);
            let request = match request.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(Status::internal("missing request message").into_http()),
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match service.subscribe(request).await {
                Ok(updates) => {
                    let body = UpdatesBody { updates, payload: None, done: false, max };
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response.headers_mut().insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A `WatchSnapshots` response body: each update as a gRPC message (the 5-byte prefix, then the
/// shared bytes), then the status in trailers.
struct UpdatesBody {
    updates: Subscription,
    /// The bytes of the message whose prefix was just sent.
    payload: Option<Bytes>,
    done: bool,
    max: usize,
}

impl UpdatesBody {
    /// Below this a message is copied behind its prefix (one frame); above, sent as it is.
    const COPY_BELOW: usize = 4096;
}

impl hyper::body::Body for UpdatesBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(payload) = self.payload.take() {
            return Poll::Ready(Some(Ok(Frame::data(payload))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut self.updates).poll_next(cx)) {
            Some(Ok(update)) => {
                let bytes = update.bytes();
                match u32::try_from(bytes.len()) {
                    Ok(len) if bytes.len() <= self.max => {
                        let mut message = Vec::with_capacity(5 + bytes.len().min(Self::COPY_BELOW));
                        message.push(0); // not compressed
                        message.extend_from_slice(&len.to_be_bytes());
                        if bytes.len() < Self::COPY_BELOW {
                            message.extend_from_slice(bytes);
                        } else {
                            self.payload = Some(bytes.clone());
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(message)))));
                    }
                    _ => Status::out_of_range(format!(
                        "snapshot update of {} bytes is over the {} byte limit",
                        bytes.len(),
                        self.max
                    )),
                }
            }
            Some(Err(status)) => status,
            None => Status::new(Code::Ok, ""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(Status::GRPC_STATUS, http::HeaderValue::from(status.code() as i32));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.payload.is_none()
    }
}

/// Decodes the `WatchRequest` (tonic's request decoding wants a whole codec).
#[derive(Debug, Clone, Copy, Default)]
struct RequestCodec;

impl Codec for RequestCodec {
    type Encode = pb::WatchRequest;
    type Decode = pb::WatchRequest;
    type Encoder = RequestCodec;
    type Decoder = RequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestCodec
    }
}

impl Encoder for RequestCodec {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn encode(&mut self, item: pb::WatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RequestCodec {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        pb::WatchRequest::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
