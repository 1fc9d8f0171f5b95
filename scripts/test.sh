#!/usr/bin/env bash
# Runs every test of fieldsync from a fresh checkout on a fresh machine:
# installs what it needs, starts what it needs (servers on loopback), and
# stops them. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "Rust: format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust: unit and end-to-end tests (real server processes on 127.0.0.1, simulation seeds)"
FIELDSYNC_SIM_SEEDS=${FIELDSYNC_SIM_SEEDS:-200} cargo test --workspace --locked

if [ -f tests/check_openapi.py ]; then
  step "Protocol: OpenAPI file is valid and lists every route"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator pyyaml >/dev/null
  python3 tests/check_openapi.py
fi

step "Admin console: browser tests (headless Chromium)"
scripts/browser-test.sh

step "Bindings: Kotlin on the JVM against a real server, generated Swift parse-checked"
scripts/kotlin-test.sh

step "Demo runs and exits 0"
cargo run --quiet --locked -- demo --work-orders 100 >/dev/null

step "Reliability: the simulation harness finds a bug planted on purpose"
cargo test --locked --test simulation --features planted-bug

echo
echo "all tests passed"
