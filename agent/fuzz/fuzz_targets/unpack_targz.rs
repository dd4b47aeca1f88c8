//! The input is the downloaded artifact itself: reaches the gzip or zstd layer (told by the
//! magic bytes; the seeds hold both) and, through the seeds,
//! the tar layer behind it (`drover::unpack::unpack`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_unpack(data));
