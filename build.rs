//! Compiles the gRPC protos (feature `grpc`) with protox — no system
//! `protoc` — and writes the file descriptor set served by reflection.
//! Sets `STAGETIME_BUILD_VERSION`, what the binaries' `--version` prints:
//! `STAGETIME_VERSION` from the build's environment (the image build passes
//! its tag), else the crate's version.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=STAGETIME_VERSION");
    let version = std::env::var("STAGETIME_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    println!("cargo:rustc-env=STAGETIME_BUILD_VERSION={}", version.trim());
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true);
    compiler.open_files(["revisionrun.proto", "stagetime/v1/stagetime.proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("stagetime_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
