//! Fuzz target `push_response`: see `fieldsync_fuzz::core_checks::push_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldsync_fuzz::core_checks::push_response(data));
