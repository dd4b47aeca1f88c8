//! The input is the tar stream; the target corrects its header checksums and compresses it with
//! zstd (as `drover publish --format zstd` does) before `drover::unpack::unpack` reads it, so
//! every mutation lands in the tar layer behind the zstd decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_fuzz::check_unpack_tar_zstd(data));
