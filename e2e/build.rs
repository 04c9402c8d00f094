//! Compiles the test service `proto/echo.proto` with protox (a pure-Rust
//! protobuf compiler), as the main crate does, so tests never need a system
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/echo.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
