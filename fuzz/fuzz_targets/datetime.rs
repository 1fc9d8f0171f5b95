//! Fuzz target `datetime`: see `fieldsync_fuzz::core_checks::datetime`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::core_checks::datetime(data));
