//! Safetensors weight files: `Weights::from_bytes` returns the weights or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = uqengine::models::weights::Weights::from_bytes(
        data,
        std::path::Path::new("fuzzed.safetensors"),
    );
});
