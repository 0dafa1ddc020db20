//! Generates the gRPC code from proto/ with protox, a protobuf compiler written in
//! Rust: no system `protoc` is needed anywhere. The descriptor set is kept too,
//! for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary compiled in one checkout may be reused
    // for another (one shared target directory), so a compile-time path would point
    // at the first checkout.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("tollgate/entitlements/v1/entitlements.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the set itself: write it for reflection.
    std::fs::write(
        out.join("tollgate_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
