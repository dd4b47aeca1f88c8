//! The input is the tar stream; the target corrects its header checksums and gzips it before
//! `drover::unpack::unpack` reads it, so every mutation lands in the tar layer (headers, names,
//! links, sizes, extended headers, padding).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_unpack_tar(data));
