//! `streamgate_fuzz::token`, coverage-guided (scripts/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    streamgate_fuzz::token(input);
});
