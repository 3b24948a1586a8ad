//! Multiproc's decoder against postcard's on arbitrary bytes: `cargo +nightly fuzz run decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::fuzzing::decode(data);
});
