//! Fuzz target `push_request`: see `fieldsync_fuzz::core_checks::push_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::core_checks::push_request(data));
