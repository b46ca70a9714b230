//! cargo-fuzz entry point; the checks live in `certgate_fuzz::dn_render`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate_fuzz::dn_render(data));
