//! `streamgate_fuzz::hls`, coverage-guided (scripts/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    streamgate_fuzz::hls(input);
});
