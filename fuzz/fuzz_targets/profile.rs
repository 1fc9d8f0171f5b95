//! Fuzz target `profile`: see `fieldsync_fuzz::core_checks::profile`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::core_checks::profile(data));
