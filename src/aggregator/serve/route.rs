//! The control-plane gRPC service as mounted on the server: `WatchSnapshots` is served with a
//! codec that writes the shared, already encoded updates as they are (one copy into the stream's
//! buffer, no protobuf encoding per stream); `Scrape` and `Report` go to the generated server.
//! The wire format is the generated one: clients use the generated client unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BufMut as _;
use prost::Message as _;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_server::{ControlPlaneServer, SERVICE_NAME};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::ControlPlaneService;
use super::updates::{EncodedUpdate, Subscription};

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
        let (watch, max) = (Watch(self.service.clone()), self.max_encoding);
        Box::pin(async move {
            let mut grpc = Grpc::new(SharedCodec).apply_max_message_size_config(None, Some(max));
            Ok(grpc.server_streaming(watch, req).await)
        })
    }
}

struct Watch(Arc<ControlPlaneService>);

impl ServerStreamingService<pb::WatchRequest> for Watch {
    type Response = EncodedUpdate;
    type ResponseStream = Subscription;
    type Future = BoxFuture<Response<Subscription>, Status>;

    fn call(&mut self, request: Request<pb::WatchRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.subscribe(request.into_inner()).await.map(Response::new) })
    }
}

/// Decodes the `WatchRequest`; writes an [`EncodedUpdate`]'s bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct SharedCodec;

impl Codec for SharedCodec {
    type Encode = EncodedUpdate;
    type Decode = pb::WatchRequest;
    type Encoder = SharedCodec;
    type Decoder = SharedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        SharedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        SharedCodec
    }
}

impl Encoder for SharedCodec {
    type Item = EncodedUpdate;
    type Error = Status;

    fn encode(&mut self, item: EncodedUpdate, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.bytes().len());
        dst.put_slice(item.bytes());
        Ok(())
    }
}

impl Decoder for SharedCodec {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        pb::WatchRequest::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
