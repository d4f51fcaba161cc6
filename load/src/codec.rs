//! What a simulated agent sends on its stream: `Hello` as `prost` encodes it, and
//! reports as [`Encoded`] (a cached body behind a fresh sequence number and
//! timestamp), through `rally_proto::encoded`'s call.

use prost::Message;
use rally_proto::v1 as pb;

use crate::report::Encoded;

pub use rally_proto::encoded::stream;

/// What an agent sends on its stream.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A message encoded by `prost` (the `Hello`), boxed: a report is far smaller.
    Message(Box<pb::AgentMessage>),
    /// A report from its cached encoding.
    Report(Encoded),
}

impl rally_proto::encoded::Encoded for Outgoing {
    fn encoded_len(&self) -> usize {
        match self {
            Outgoing::Message(m) => m.encoded_len(),
            Outgoing::Report(r) => r.encoded_len(),
        }
    }

    fn encode_to(self, dst: &mut impl bytes::BufMut) {
        match self {
            // Into a buffer reserved for its length: cannot run short.
            Outgoing::Message(m) => m.encode_raw(dst),
            Outgoing::Report(r) => r.encode(dst),
        }
    }
}
