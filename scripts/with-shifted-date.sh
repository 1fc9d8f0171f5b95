#!/usr/bin/env bash
# Runs a cargo command whose test programs (and every process they start)
# see the wall clock moved DAYS days ahead:
#
#   scripts/with-shifted-date.sh 400 cargo test --workspace
#
# A test that passes only on today's date fails here. The monotonic clock
# is left alone, so timeouts and sleeps behave as usual. Cargo itself runs
# on the real date (its build fingerprints are untouched); the test
# programs run through libfaketime as cargo's target runner. Installs
# Debian's faketime when it is missing.
set -euo pipefail

days=${1:?usage: with-shifted-date.sh DAYS COMMAND...}
shift

if ! command -v faketime >/dev/null 2>&1; then
  echo "==> installing faketime from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq faketime >/dev/null
fi

host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
export "$runner_var"="faketime -m -f +${days}d"
export FAKETIME_DONT_FAKE_MONOTONIC=1 DONT_FAKE_MONOTONIC=1
# What fieldsync-core's a_shifted_date_run_sees_the_shifted_date checks.
export FIELDSYNC_SHIFTED_DAYS=$days FIELDSYNC_REAL_START_SECS=$(date +%s)
exec "$@"
