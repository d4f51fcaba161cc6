//! The gRPC codec of a simulated agent's stream: sends `Hello` as `prost` encodes it
//! and reports as [`Encoded`] (a cached body behind a fresh sequence number and
//! timestamp), and decodes the collector's messages with `prost`.

use prost::Message;
use rally_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{GrpcMethod, IntoStreamingRequest, Response, Status, Streaming};

use crate::report::Encoded;

/// What an agent sends on its stream.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A message encoded by `prost` (the `Hello`), boxed: a report is far smaller.
    Message(Box<pb::AgentMessage>),
    /// A report from its cached encoding.
    Report(Encoded),
}

/// The codec of `rally.v1.Ingest/Stream` for [`Outgoing`] messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCodec;

/// The encoding half of [`AgentCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentEncoder;

/// The decoding half of [`AgentCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectorDecoder;

impl Encoder for AgentEncoder {
    type Item = Outgoing;
    type Error = Status;
    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encode: {e}"))),
            Outgoing::Report(r) => {
                dst.reserve(r.encoded_len());
                r.encode(dst);
                Ok(())
            }
        }
    }
}

impl Decoder for CollectorDecoder {
    type Item = pb::CollectorMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::CollectorMessage>, Status> {
        pb::CollectorMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }
}

impl Codec for AgentCodec {
    type Encode = Outgoing;
    type Decode = pb::CollectorMessage;
    type Encoder = AgentEncoder;
    type Decoder = CollectorDecoder;
    fn encoder(&mut self) -> AgentEncoder {
        AgentEncoder
    }
    fn decoder(&mut self) -> CollectorDecoder {
        CollectorDecoder
    }
}

/// Calls `rally.v1.Ingest/Stream` on `channel` with `request`, as the generated
/// `IngestClient::stream` does but with [`AgentCodec`].
pub async fn stream(
    channel: Channel,
    request: impl IntoStreamingRequest<Message = Outgoing>,
) -> Result<Response<Streaming<pb::CollectorMessage>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = request.into_streaming_request();
    request
        .extensions_mut()
        .insert(GrpcMethod::new("rally.v1.Ingest", "Stream"));
    let path = PathAndQuery::from_static("/rally.v1.Ingest/Stream");
    grpc.streaming(request, path, AgentCodec).await
}
