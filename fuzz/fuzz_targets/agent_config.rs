//! Fuzz target `agent_config`: see `rally_tests::fuzz::agent_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A refused input is fine; a panic or a broken invariant is the finding.
    let _ = rally_tests::fuzz::agent_config(data);
});
