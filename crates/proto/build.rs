//! Compiles the whole `proto/` tree once with protox (no protoc needed), writes the
//! encoded descriptor set for reflection, and generates `bytes` fields as `bytes::Bytes`.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let files = proto_files(&proto_root.join("flowplane"))?;
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("flowplane_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::FlowCodec")
        .compile_fds(fds)?;
    Ok(())
}

/// Every `.proto` file under `dir`, sorted so the build is deterministic.
fn proto_files(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            println!("cargo:rerun-if-changed={}", path.display());
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
