#!/usr/bin/env bash
# Builds ios/FieldSyncFFI.xcframework and the generated Swift for the Swift
# package in ios/. Needs a Mac with Xcode and the rustup targets
# aarch64-apple-ios, aarch64-apple-ios-sim, x86_64-apple-ios. Not run on the
# Linux development machines (no Apple toolchain there).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
for t in "${targets[@]}"; do
  cargo build --locked --release -p fieldsync-bindings --target "$t"
done
cargo build --locked -p uniffi-bindgen
out=target/uniffi/swift
rm -rf "$out" && mkdir -p "$out/headers"
target/debug/uniffi-bindgen generate target/aarch64-apple-ios/release/libfieldsync_ffi.a \
  --language swift --out-dir "$out" --no-format
cp "$out/FieldSync.swift" ios/Sources/FieldSync/FieldSync.swift
cp "$out/FieldSyncFFI.h" "$out/headers/"
cp "$out/FieldSyncFFI.modulemap" "$out/headers/module.modulemap"
mkdir -p target/ios-sim
lipo -create target/aarch64-apple-ios-sim/release/libfieldsync_ffi.a \
  target/x86_64-apple-ios/release/libfieldsync_ffi.a -output target/ios-sim/libfieldsync_ffi.a
rm -rf ios/FieldSyncFFI.xcframework
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libfieldsync_ffi.a -headers "$out/headers" \
  -library target/ios-sim/libfieldsync_ffi.a -headers "$out/headers" \
  -output ios/FieldSyncFFI.xcframework
echo "ios/FieldSyncFFI.xcframework and ios/Sources/FieldSync/FieldSync.swift are ready"
