#!/usr/bin/env bash
# Runs every test of fieldsync from a fresh checkout on a fresh machine:
# installs what it needs, starts what it needs (servers on loopback), and
# stops them. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

started=$SECONDS
step() { printf '\n==> %s  [%ss]\n' "$*" "$((SECONDS - started))"; }

step "Rust: format"
cargo fmt --all -- --check

step "Rust: build every target with Clippy's lints as errors"
# What `cargo clippy --workspace --all-targets -- -D warnings` checks, done
# by the build the tests need: Clippy's driver compiles the workspace's own
# crates (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy` sets it) and fails on
# any lint. `cargo clippy` would check every dependency once more first,
# about ten minutes of a two-core machine. Exported, so every cargo command
# below (and in the scripts it calls) builds with the same wrapper and
# reuses this build instead of compiling the workspace again.
clippy_driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) ||
  { echo "clippy-driver not found: rustup component add clippy" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER=$clippy_driver
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --workspace --all-targets --locked --no-run

step "Rust: unit and end-to-end tests (real server processes on 127.0.0.1, simulation seeds)"
FIELDSYNC_SIM_SEEDS=${FIELDSYNC_SIM_SEEDS:-200} cargo test --workspace --locked

step "Rust: every test again with the date moved 400 days ahead (libfaketime; no test may depend on today's date)"
FIELDSYNC_SIM_SEEDS=${FIELDSYNC_SHIFTED_SIM_SEEDS:-20} scripts/with-shifted-date.sh 400 \
  cargo test --workspace --locked

step "PostgreSQL: the server test suites again, on a throwaway PostgreSQL cluster (two instances on one database included)"
# Every suite that runs a server (the server crate's own tests use
# SQLite, but for the PostgreSQL variants below). `--workspace` keeps the
# build of the step above; the simulation runs fewer seeds here, each seed
# being a fresh PostgreSQL database.
FIELDSYNC_SIM_SEEDS=${FIELDSYNC_PG_SIM_SEEDS:-10} scripts/with-postgres.sh \
  cargo test --locked --workspace \
    --test backbone --test profile_filters --test filter_property --test security --test data_model \
    --test console_access --test device_status --test scheduling --test multi_instance --test operations \
    --test progress --test time_zones --test related_filters \
    --test simulation --test transactions --test local_query --test telemetry_wire
# The unit tests that have a PostgreSQL variant (named `..._on_postgres`;
# they return at once without the cluster). `--workspace`, not
# `-p fieldsync-server`: the features stay those of the build above.
scripts/with-postgres.sh cargo test --locked --workspace --lib on_postgres

if [ -f tests/check_openapi.py ]; then
  step "Protocol: OpenAPI file is valid and lists every route"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator pyyaml >/dev/null
  python3 tests/check_openapi.py
fi

step "Protocol: schema-driven requests against a real server agree with the OpenAPI file (schemathesis)"
scripts/schemathesis.sh

step "Admin console: browser tests (headless Chromium)"
scripts/browser-test.sh

step "Bindings: Kotlin on the JVM against a real server, generated Swift parse-checked"
scripts/kotlin-test.sh

step "Demo runs and exits 0"
# The binary the two steps above built (`cargo run` alone would resolve
# other features and build the workspace a third time).
target/debug/fieldsync demo --work-orders 100 >/dev/null

# The planted bugs build without Clippy's driver: the code they disable is
# then unused, which the lints would refuse. `--workspace` keeps the
# dependencies' features those of the build above, so only the workspace's
# own crates are compiled again.
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS

step "Reliability: the simulation harness finds a bug planted on purpose"
cargo test --locked --workspace --test simulation --features fieldsync/planted-bug -- --show-output

step "Reliability: the multi-instance test catches a naive change cursor planted on purpose (PostgreSQL)"
scripts/with-postgres.sh cargo test --locked --workspace --test multi_instance --features fieldsync/planted-bug

echo
echo "all tests passed in $((SECONDS - started)) s"
