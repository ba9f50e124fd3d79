//! The wire contract, generated at build time from `proto/telehub/v1/telehub.proto`.
//!
//! Types are prost messages; the pbjson-generated serde impls give the proto3 JSON
//! mapping used by the `telehub.v1.json` dashboard subprotocol.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/telehub.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/telehub.v1.serde.rs"));
