//! Posterior files: `Posterior::from_bytes` returns a posterior or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = uqengine::laplace::Posterior::from_bytes(
        data,
        std::path::Path::new("fuzzed.posterior.safetensors"),
    );
});
