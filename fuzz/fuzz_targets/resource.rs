//! A resource as the admin API receives it: arbitrary JSON through
//! `AnyResource::from_value`, `validate`, and whole-configuration
//! validation. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nio_proto::model::{AnyResource, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(resource) = AnyResource::from_value(value) else {
        return;
    };
    let _ = resource.validate();
    // Round trip: what is stored must read back.
    let _ = AnyResource::from_value(resource.to_value());
    let mut config = Config::default();
    config.insert(resource);
    let _ = config.validate();
});
