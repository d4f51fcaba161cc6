//! A gRPC client for `rally.v1.Ingest/Stream` that sends arbitrary bytes as
//! messages, so tests can send what a well-behaved agent never would (garbage,
//! truncated protobuf) and read the status the collector answers with.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Passes message bytes through unchanged in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// The encoding half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// The decoding half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Opens the ingest stream on `endpoint` (e.g. `http://127.0.0.1:9470`), sends
/// `messages` as raw message bytes and returns the first status the collector
/// answers with (`Ok` carries the responses received before the stream ended).
pub async fn ingest_stream(endpoint: &str, messages: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Status> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    // Keep the request stream open after the messages, as an agent would, so the
    // answer is the collector's verdict and not a reaction to our half-close.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(messages.len().max(1));
    for m in messages {
        tx.send(m)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let path = PathAndQuery::from_static("/rally.v1.Ingest/Stream");
    let mut responses: Streaming<Vec<u8>> =
        grpc.streaming(request, path, RawCodec).await?.into_inner();
    let mut got = Vec::new();
    let wait = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some(m) = responses.message().await? {
            got.push(m);
        }
        Ok::<_, Status>(())
    })
    .await;
    drop(tx);
    match wait {
        Ok(Ok(())) => Ok(got),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no verdict from the collector within 15 s ({} responses)",
            got.len()
        ))),
    }
}
