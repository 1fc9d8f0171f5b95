//! Fuzz target `cursor`: see `fieldsync_fuzz::server_checks::cursor`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::server_checks::cursor(data));
