//! Compiles `proto/telehub/v1/telehub.proto` with protox (pure Rust, no system
//! `protoc`), generates prost types and pbjson serde impls for the JSON mapping.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto = "proto/telehub/v1/telehub.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile([proto], ["proto"])?;
    let descriptor_path = out.join("telehub_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_path)
        .compile_fds(descriptors)?;

    let set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".telehub.v1"])?;
    Ok(())
}
