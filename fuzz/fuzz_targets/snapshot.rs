//! A snapshot as the data plane receives it from the control plane (or its
//! cache): protobuf decode, the held resources, their decoding and
//! validation, compile, and the cache written from what is held. Nothing
//! in it may panic the data plane.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nio_proto::snapshot::Holding;
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
    let Ok(holding) = Holding::from_snapshot(&snapshot) else {
        return;
    };
    let Ok(config) = holding.decode_all() else {
        return;
    };
    let _guard = runtime().enter();
    let _ =
        nio_data_plane::runtime::compile(&config, snapshot.revision, &snapshot.hash, None, None);
    let mut cache = Vec::new();
    let _ = holding.write(snapshot.revision, &mut cache);
});
