//! The input is the tar stream, gzipped here before `drover::unpack::unpack` reads it: every
//! mutation lands in the tar layer (headers, names, links, sizes, padding).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_unpack(&drover_fuzz::gzip(data)));
