//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler),
//! so building Nio never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/nio/v1/sync.proto", "proto/nio/v1/events.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Resource bodies as `Bytes`: shared, not copied, between the data-plane
    // groups and streams that send the same resource.
    tonic_prost_build::configure()
        .bytes(".nio.v1.Resource.json")
        .bytes(".nio.v1.Snapshot.resources_gzip")
        .compile_fds(fds)?;
    Ok(())
}
