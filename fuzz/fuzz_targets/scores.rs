//! Score tables: `io::scores::parse_csv` returns the rows or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = uqengine::io::scores::parse_csv(&text, std::path::Path::new("fuzzed.csv"));
});
