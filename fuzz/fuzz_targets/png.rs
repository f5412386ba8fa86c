//! Member images: `io::members::decode_png_u8` (the decoder of `load_png_u8`) returns the pixels
//! or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = uqengine::io::members::decode_png_u8(data, std::path::Path::new("fuzzed.png"));
});
