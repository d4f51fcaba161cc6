//! Fuzz target `access_log`: see `rally_tests::fuzz::access_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A refused input is fine; a panic or a broken invariant is the finding.
    let _ = rally_tests::fuzz::access_log(data);
});
