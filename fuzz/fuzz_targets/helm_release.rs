//! Helm release decoding (base64, optional gzip, JSON) on any bytes: a typed error or a
//! release, never a panic, and never unbounded memory (gzip bombs are cut off).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kubectl_taskrun::migrate::release::decode(data);
});
