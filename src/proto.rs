//! The wire contract, generated at build time from `proto/telehub/v1/telehub.proto`.
//!
//! Types are prost messages; the pbjson-generated serde impls give the proto3 JSON
//! mapping used by the `telehub.v1.json` dashboard subprotocol.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/telehub.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/telehub.v1.serde.rs"));

/// The compiled `FileDescriptorSet` of `proto/telehub/v1/telehub.proto` (protobuf
/// binary), written by `build.rs`. Clients in other languages can build their message
/// types from it at run time without `protoc`; the interoperability tests hand it to
/// Python's `protobuf` package this way.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/telehub_descriptor.bin"));

/// What nodes of a cluster send each other through Redis (internal, versioned:
/// `proto/telehub/cluster/v1/cluster.proto`).
pub mod cluster {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/telehub.cluster.v1.rs"));
}
