//! The cluster's message decoders (task envelope, outcome, reply) on arbitrary bytes, as
//! anyone who can write to a Redis stream could leave them:
//! `cargo +nightly fuzz run cluster_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::fuzzing::cluster_message(data);
});
