//! The SSM parameter's value: a bare version or a JSON object (`drover::value::parse_value`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_value(data));
