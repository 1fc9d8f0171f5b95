//! Fuzz target `filter`: see `fieldsync_fuzz::server_checks::filter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::server_checks::filter(data));
