//! `rally.v1.Ingest/Stream` for a client whose messages are encoded before they are
//! sent (the agent encodes a report once, when it samples; the load generator caches
//! a body): the generated client's call, with a codec that writes the bytes as they
//! are and decodes the collector's answers with prost.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{IntoStreamingRequest, Response, Status, Streaming};
use tonic_prost::ProstDecoder;

use crate::v1::CollectorMessage;

/// An `AgentMessage` in its wire encoding.
pub trait Encoded: Send + Sync + 'static {
    /// Its length in bytes.
    fn encoded_len(&self) -> usize;
    /// Writes it to `dst`.
    fn encode_to(self, dst: &mut impl BufMut);
}

impl Encoded for Bytes {
    fn encoded_len(&self) -> usize {
        self.len()
    }

    fn encode_to(self, dst: &mut impl BufMut) {
        dst.put(self);
    }
}

/// Calls `rally.v1.Ingest/Stream` on `channel`, as the generated
/// `IngestClient::stream` does, sending `request`'s messages as they are encoded.
pub async fn stream<T: Encoded>(
    channel: Channel,
    request: impl IntoStreamingRequest<Message = T>,
) -> Result<Response<Streaming<CollectorMessage>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = request.into_streaming_request();
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("rally.v1.Ingest", "Stream"));
    let path = PathAndQuery::from_static("/rally.v1.Ingest/Stream");
    grpc.streaming(request, path, EncodedCodec(PhantomData))
        .await
}

/// Sends [`Encoded`] messages; decodes `CollectorMessage`s with prost.
#[derive(Debug)]
struct EncodedCodec<T>(PhantomData<fn(T)>);

impl<T: Encoded> Codec for EncodedCodec<T> {
    type Encode = T;
    type Decode = CollectorMessage;
    type Encoder = EncodedEncoder<T>;
    type Decoder = ProstDecoder<CollectorMessage>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Copies an encoded message into the frame.
#[derive(Debug)]
struct EncodedEncoder<T>(PhantomData<fn(T)>);

impl<T: Encoded> Encoder for EncodedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_to(dst);
        Ok(())
    }
}
