//! Fuzz target `pull_page`: see `fieldsync_fuzz::core_checks::pull_page`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::core_checks::pull_page(data));
