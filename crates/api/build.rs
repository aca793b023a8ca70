//! Compiles the Prometheus remote write/read messages in `proto/` with protox (pure Rust: no
//! system `protoc`) and prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("prometheus/types.proto"),
        root.join("prometheus/remote.proto"),
        root.join("io/prometheus/write/v2/types.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
