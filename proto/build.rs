//! Compiles `proto/cobble/v1/*.proto` with protox (pure Rust, so no system
//! `protoc` is needed) and generates tonic clients and servers.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/cobble/v1/cobble.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Round-trip through bytes so protox and tonic-prost-build need not share
    // a prost-types version.
    let encoded = descriptors.encode_to_vec();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("cobble_descriptor.bin"), &encoded)?;
    let descriptors = tonic_prost_build::FileDescriptorSet::decode(encoded.as_slice())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
