//! A snapshot as the data plane receives it from the control plane (or its
//! cache): protobuf decode, resource decode and validation, then compile.
//! Nothing in it may panic the data plane.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nio_data_plane::metrics::Metrics;
use nio_proto::snapshot::{decode_set, ResourceSet};
use prost::Message;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = nio_proto::v1::Snapshot::decode(data) else {
        return;
    };
    let Ok(set) = ResourceSet::from_snapshot(&snapshot) else {
        return;
    };
    let Ok(config) = decode_set(&set) else {
        return;
    };
    let _guard = runtime().enter();
    let metrics = Metrics::default();
    let _ = nio_data_plane::runtime::compile(
        &config,
        snapshot.revision,
        &snapshot.hash,
        None,
        None,
        &metrics,
    );
});
