//! The collector's integration tests, one binary (one link on 2 cores instead of one
//! per file): each module starts real collectors on loopback ports of its own.

mod support;

mod binary;
mod demo;
mod http;
mod ingest;
mod layering;
mod oktawave;
mod operator;
