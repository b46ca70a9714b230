//! cargo-fuzz entry point; the checks live in `certgate_fuzz::path_differential`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate_fuzz::path_differential(data));
