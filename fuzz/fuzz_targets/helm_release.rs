//! Helm release decoding (base64, optional gzip, JSON) on any bytes: a typed error or a
//! release, never a panic, and never unbounded memory (gzip bombs are cut off). The same bytes
//! as a release manifest's YAML: never a panic, and aliases never expand without bound.
#![no_main]

use kubectl_taskrun::migrate::{bounded_yaml, release};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = release::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bounded_yaml::documents(text);
    }
});
