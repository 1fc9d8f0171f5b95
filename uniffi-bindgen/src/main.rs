//! The `uniffi-bindgen` command of this workspace: generates Kotlin and Swift
//! from the built `fieldsync-bindings` library (library mode), for example
//! `uniffi-bindgen generate target/debug/libfieldsync.so --language kotlin --out-dir out`.
//! It must run inside the workspace: it reads `bindings/uniffi.toml` through
//! `cargo metadata`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
