//! The part of etcd's v3 gRPC API that Rally's highly available collectors speak, and a
//! thin client over it.
//!
//! # Layout
//!
//! - [`pb`]: etcd's messages and service clients, generated at build time by protox from
//!   the `.proto` files under `proto/` (etcd's own, unchanged): no system `protoc`.
//! - [`Etcd`]: one balanced channel to every listed member, with a deadline on every
//!   call, and the calls the collector makes: leases, the election service, reads and
//!   transactions.
//!
//! Why not the `etcd-client` crate: it compiles the same files with `prost-build`, which
//! needs a system `protoc` at build time, and Rally builds with `cargo` alone on a fresh
//! machine. What it would add over these few calls (auth, watch helpers, locks) Rally
//! does not use.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// etcd's generated API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// Key-value pairs and events (`mvccpb`).
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// Users and roles (`authpb`), referenced by `etcdserverpb`.
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// KV, Lease, Watch, Cluster, Maintenance, Auth (`etcdserverpb`).
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// The election service (`v3electionpb`).
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::request_op::Request as Op;
use pb::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use pb::mvccpb::KeyValue;
use pb::v3electionpb::election_client::ElectionClient;
use pb::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ResignRequest};

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An endpoint is not a valid URL.
    #[error("etcd endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// No endpoint was given.
    #[error("no etcd endpoint configured")]
    NoEndpoint,
    /// etcd answered with an error (or no member could be reached).
    #[error("etcd {call}: {status}")]
    Status {
        /// The call.
        call: &'static str,
        /// gRPC's status.
        status: Box<tonic::Status>,
    },
    /// etcd did not answer in time.
    #[error("etcd {call}: no answer within {timeout:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// The lease is gone (expired or revoked): its keys are deleted.
    #[error("etcd lease {0:x} has expired")]
    LeaseExpired(i64),
    /// An `https://` endpoint without [`Tls`], or [`Tls`] for an `http://` one.
    #[error("etcd endpoint {0:?}: https:// needs the CA (and http:// takes none)")]
    Scheme(String),
}

/// TLS to etcd's client port: the CA that signed the members' certificates and, when
/// they ask for one (`--client-cert-auth`), this client's certificate and key (PEM).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificates, PEM.
    pub ca: Vec<u8>,
    /// This client's certificate chain and private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Keys per request of [`Etcd::get_prefix`]: a page of documents of a few kilobytes
/// stays far below gRPC's 4 MiB default message limit.
pub const PAGE: i64 = 256;

/// A transaction's outcome: whether its comparisons held, and the header's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The comparisons held and the writes were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// A client for one etcd cluster: every call goes to a member that answers (tonic
/// balances over the endpoints) and gives up after `timeout`.
#[derive(Debug, Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    election: ElectionClient<Channel>,
    timeout: Duration,
}

impl Etcd {
    /// A client for `endpoints` (`http://host:2379`, ...). Connects lazily: a cluster
    /// that is down now is not an error until a call is made.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        Self::with_tls(endpoints, timeout, None)
    }

    /// [`new`](Self::new) with `tls` for `https://` endpoints (every endpoint must
    /// then be `https://`).
    pub fn with_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let mut list = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let endpoint =
                Endpoint::from_shared(e.clone()).map_err(|source| EtcdError::Endpoint {
                    endpoint: e.clone(),
                    source,
                })?;
            let endpoint = match (e.starts_with("https://"), tls) {
                (true, Some(tls)) => {
                    let mut config =
                        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
                    if let Some((cert, key)) = &tls.identity {
                        config = config.identity(Identity::from_pem(cert, key));
                    }
                    endpoint
                        .tls_config(config)
                        .map_err(|source| EtcdError::Endpoint {
                            endpoint: e.clone(),
                            source,
                        })?
                }
                (false, None) => endpoint,
                _ => return Err(EtcdError::Scheme(e.clone())),
            };
            let endpoint = endpoint
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                // A member cut off without a FIN is noticed, and its calls fail over.
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
            list.push(endpoint);
        }
        let channel = Channel::balance_list(list.into_iter());
        Ok(Self {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            election: ElectionClient::new(channel),
            timeout,
        })
    }

    /// The deadline of every call but [`campaign`](Self::campaign).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn within<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(EtcdError::Status {
                call,
                status: Box::new(status),
            }),
            Err(_) => Err(EtcdError::Timeout {
                call,
                timeout: self.timeout,
            }),
        }
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let mut c = self.lease.clone();
        let r = self
            .within(
                "LeaseGrant",
                c.lease_grant(LeaseGrantRequest { ttl, id: 0 }),
            )
            .await?;
        Ok(r.id)
    }

    /// Renews lease `id` once; returns the TTL it now has, in seconds, or
    /// [`EtcdError::LeaseExpired`] if it is gone.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let mut c = self.lease.clone();
        let once = async move {
            let request = tokio_stream_once(LeaseKeepAliveRequest { id });
            let mut stream = c.lease_keep_alive(request).await?.into_inner();
            let answer = stream.message().await?;
            Ok(tonic::Response::new(answer))
        };
        match self.within("LeaseKeepAlive", once).await? {
            Some(r) if r.ttl > 0 => Ok(r.ttl),
            _ => Err(EtcdError::LeaseExpired(id)),
        }
    }

    /// Revokes lease `id`: its keys go at once (a clean hand-over of leadership).
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let mut c = self.lease.clone();
        self.within("LeaseRevoke", c.lease_revoke(LeaseRevokeRequest { id }))
            .await?;
        Ok(())
    }

    /// Campaigns in election `name` with lease `lease` and `value`: returns once this
    /// candidate leads, with its key (its `rev` is the fencing token of the term).
    /// Waits as long as another candidate leads: no deadline; drop it to give up.
    pub async fn campaign(
        &self,
        name: &str,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<LeaderKey, EtcdError> {
        let mut c = self.election.clone();
        let r = c
            .campaign(CampaignRequest {
                name: name.as_bytes().to_vec(),
                lease,
                value,
            })
            .await
            .map_err(|status| EtcdError::Status {
                call: "Campaign",
                status: Box::new(status),
            })?
            .into_inner();
        r.leader.ok_or_else(|| EtcdError::Status {
            call: "Campaign",
            status: Box::new(tonic::Status::internal("no leader key in the answer")),
        })
    }

    /// The current leader of election `name`, if any: its key, value and create revision.
    pub async fn leader(&self, name: &str) -> Result<Option<KeyValue>, EtcdError> {
        let mut c = self.election.clone();
        let r = self
            .within(
                "Leader",
                c.leader(LeaderRequest {
                    name: name.as_bytes().to_vec(),
                }),
            )
            .await;
        match r {
            Ok(r) => Ok(r.kv),
            // The election service answers "no leader" as an error.
            Err(EtcdError::Status { status, .. })
                if status.message().contains("no leader")
                    || status.message().contains("election: no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives up leadership `key` (its key is deleted; the next candidate leads).
    pub async fn resign(&self, key: LeaderKey) -> Result<(), EtcdError> {
        let mut c = self.election.clone();
        self.within("Resign", c.resign(ResignRequest { leader: Some(key) }))
            .await?;
        Ok(())
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let mut c = self.kv.clone();
        let r = self
            .within(
                "Range",
                c.range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..RangeRequest::default()
                }),
            )
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    /// Every key under `prefix`, in key order, as of one revision. Read in pages of
    /// [`PAGE`] keys, so that a long range stays under gRPC's message size limit.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        Ok(self.get_prefix_since(prefix, 0).await?.0)
    }

    /// The keys under `prefix` changed at or after revision `min_mod_revision` (0: every
    /// key), in key order, and the revision they were read at: a cache of the range
    /// stays current by asking for what changed after the revision it last read.
    pub async fn get_prefix_since(
        &self,
        prefix: &str,
        min_mod_revision: i64,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let range_end = prefix_end(prefix.as_bytes());
        let mut key = prefix.as_bytes().to_vec();
        // 0 for the first page: the latest revision, which the next pages are read at.
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut c = self.kv.clone();
            let r = self
                .within(
                    "Range",
                    c.range(RangeRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        limit: PAGE,
                        revision,
                        min_mod_revision,
                        ..RangeRequest::default()
                    }),
                )
                .await?;
            if revision == 0 {
                revision = r.header.map_or(0, |h| h.revision);
            }
            let Some(last) = r.kvs.last() else {
                break;
            };
            // The next page starts right after the last key read.
            key.clone_from(&last.key);
            key.push(0);
            kvs.extend(r.kvs);
            if !r.more {
                break;
            }
        }
        Ok((kvs, revision))
    }

    /// Applies `writes` if every comparison in `when` holds, atomically.
    pub async fn txn(
        &self,
        when: Vec<Compare>,
        writes: Vec<Write>,
    ) -> Result<TxnOutcome, EtcdError> {
        let mut c = self.kv.clone();
        let success = writes.into_iter().map(Write::into_op).collect();
        let r = self
            .within(
                "Txn",
                c.txn(TxnRequest {
                    compare: when,
                    success,
                    failure: Vec::new(),
                }),
            )
            .await?;
        Ok(TxnOutcome {
            succeeded: r.succeeded,
            revision: r.header.map_or(0, |h| h.revision),
        })
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Deletes a key.
    Delete {
        /// The key.
        key: String,
    },
}

impl Write {
    fn into_op(self) -> RequestOp {
        let op = match self {
            Self::Put { key, value } => Op::RequestPut(PutRequest {
                key: key.into_bytes(),
                value,
                ..PutRequest::default()
            }),
            Self::Delete { key } => Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.into_bytes(),
                ..DeleteRangeRequest::default()
            }),
        };
        RequestOp { request: Some(op) }
    }
}

/// A leader's term: its key in the election and the revision that created the key,
/// which is the term's fencing token (a later term always has a higher one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The leader's key (`<election>/<lease id>`), deleted when its lease ends.
    pub key: Vec<u8>,
    /// The key's create revision: the fencing token.
    pub token: u64,
}

impl Term {
    /// The term of a campaign's answer.
    pub fn of(leader: &LeaderKey) -> Self {
        Self {
            key: leader.key.clone(),
            token: u64::try_from(leader.rev).unwrap_or_default(),
        }
    }

    /// The comparison that holds while this term lasts: a transaction under it is
    /// refused once the leader's key is gone.
    pub fn holds(&self) -> Compare {
        created_at(&self.key, i64::try_from(self.token).unwrap_or(i64::MAX))
    }
}

/// Holds when `key` exists and was created at revision `revision`: a leader's key
/// that still stands, so its term (the fencing token) has not ended.
pub fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

/// The end of the range of keys that start with `prefix` (etcd's "prefix" end key).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// A request stream of exactly one message, for bidirectional calls made once.
fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter(std::iter::once(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/rally/"), b"/rally0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn an_empty_endpoint_list_is_refused() {
        assert!(matches!(
            Etcd::new(&[], Duration::from_secs(1)),
            Err(EtcdError::NoEndpoint)
        ));
    }
}
