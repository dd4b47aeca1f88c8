//! The input is the downloaded `.tar.gz` itself: reaches the gzip layer and, through the seeds,
//! the tar layer behind it (`drover::unpack::unpack`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_unpack(data));
