//! `.npy` bytes: `io::npy::parse` returns an array or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = uqengine::io::npy::parse(data, std::path::Path::new("fuzzed.npy"));
});
