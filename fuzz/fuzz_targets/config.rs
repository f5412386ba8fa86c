//! Config JSON: parsed by `JsonConfig`, then read by every config reader in turn (UNet, CLIP
//! vision, CLIP preprocessor, scheduler); each returns a config or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uqengine::config::JsonConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(c) = JsonConfig::parse(&text, std::path::Path::new("fuzzed.json")) else {
        return;
    };
    let _ = uqengine::models::unet::config::UNetConfig::from_json(&c);
    let _ = uqengine::models::clip::ClipVisionConfig::from_json(&c);
    let _ = uqengine::models::clip_preprocess::ClipPreprocess::from_json(&c);
    let _ = uqengine::sampler::SchedulerConfig::from_json(&c);
});
