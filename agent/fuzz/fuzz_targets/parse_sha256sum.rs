//! A release's `.sha256` file (`drover::digest::parse_sha256sum`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_sha256sum(data));
