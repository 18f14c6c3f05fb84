//! Cobble's gRPC protocol, generated from `proto/cobble/v1/cobble.proto`.
//!
//! This crate holds no logic: only the generated messages, clients and
//! servers, plus the encoded descriptor set that gRPC reflection serves.

/// Version 1 of the protocol (`package cobble.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cobble.v1");

    /// The encoded `FileDescriptorSet` of this package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cobble_descriptor.bin"));
}
