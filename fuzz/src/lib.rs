//! fieldsync fuzz targets' shared code: one function per target that takes
//! the fuzzer's bytes, runs them through the code under test and panics when
//! a property fails. The same files are included by the stable-Rust
//! regression tests (`core/tests/fuzz_regressions.rs`,
//! `server/tests/fuzz_regressions.rs`), which replay `fuzz/regressions/`.

pub mod core_checks;
pub mod server_checks;
