//! The frame decoder on arbitrary bytes from a peer: `cargo +nightly fuzz run frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::fuzzing::frames(data);
});
