#!/usr/bin/env bash
# Bindings check, run by scripts/test.sh: builds the core's UniFFI library for
# this machine, generates the Kotlin and Swift bindings in library mode into
# target/uniffi/ (git-ignored), compiles every Kotlin file of android/ with
# Maven (android/pom.xml: the generated Kotlin and the facade; the Android
# shell against Robolectric's android-all jar) and runs the Kotlin tests
# against real `fieldsync server` processes on loopback (JUnit 5 for the
# facade, Robolectric at SDK 24 and SDK 35 for the shell), then parse-checks
# the generated Swift with tree-sitter-swift (no Swift compiler here).
# Installs what it needs on a fresh Debian machine (JDK, Maven, the pinned
# tree-sitter packages); Maven downloads its plugins, Robolectric and the
# android-all jars into ~/.m2 (about 450 MB the first time), and Robolectric
# runs offline from them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

if ! command -v mvn >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
  step "Installing a JDK and Maven"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq default-jdk-headless maven >/dev/null
fi

step "Bindings: build the core library, the server and uniffi-bindgen"
# The same build as scripts/browser-test.sh (one feature set, built once).
cargo build --locked -p fieldsync-bindings -p uniffi-bindgen -p fieldsync
lib="$root/target/debug/libfieldsync_ffi.so"
[ -f "$lib" ] || lib="$root/target/debug/libfieldsync_ffi.dylib"

step "Bindings: generate Kotlin and Swift (library mode)"
gen="$root/target/uniffi"
rm -rf "$gen"
target/debug/uniffi-bindgen generate "$lib" --language kotlin --out-dir "$gen/kotlin" --no-format
target/debug/uniffi-bindgen generate "$lib" --language swift --out-dir "$gen/swift" --no-format
ls "$gen/kotlin/dev/fieldsync/"*.kt "$gen/swift/FieldSync.swift" >/dev/null

step "Kotlin: compile all of android/, run the JUnit and Robolectric tests against a real server"
(cd android && mvn -B -q test \
  -Duniffi.generated.dir="$gen/kotlin" \
  -Duniffi.lib.dir="$(dirname "$lib")" \
  -Dfieldsync.bin="$root/target/debug/fieldsync")

step "Swift: parse-check the generated Swift and the iOS facade (tree-sitter-swift)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r scripts/requirements-swiftcheck.txt >/dev/null
python3 scripts/swift_parse_check.py "$gen/swift/FieldSync.swift" ios/Package.swift ios/Sources/FieldSyncKit/*.swift ios/Tests/FieldSyncKitTests/*.swift
if command -v cc >/dev/null 2>&1; then
  # The C header Swift imports through the module map (gcc lacks clang's nullability keywords).
  echo '#include "FieldSyncFFI.h"' | cc -fsyntax-only -Wall -D_Nullable= -D_Nonnull= -I"$gen/swift" -x c -
fi
echo "bindings OK"
