//! A channel's receiver on a ring full of arbitrary bytes: `cargo +nightly fuzz run ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::fuzzing::ring(data);
});
