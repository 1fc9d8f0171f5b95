#!/usr/bin/env bash
# Runs every fuzz target of fieldsync (fuzz/, cargo-fuzz + libFuzzer) for N
# seconds each, one after the other, and stops at the first failure.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 3600       # an hour per target
#   scripts/fuzz.sh 120 cursor datetime   # only these targets
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs
# cargo-fuzz when missing. A failing input is written to
# fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`, fix the
# code, and copy the input to fuzz/regressions/<target>/ so that
# `cargo test` (core/tests/fuzz_regressions.rs, server/tests/fuzz_regressions.rs)
# replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pull_page push_request push_response profile datetime cursor filter)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

for target in "${targets[@]}"; do
  case $target in
    datetime | cursor) dict=fuzz/dicts/datetime.dict ;;
    filter) dict=fuzz/dicts/filter.dict ;;
    *) dict=fuzz/dicts/json.dict ;;
  esac
  printf '\n==> fuzz %s for %s s\n' "$target" "$seconds"
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run "$target" -- \
    -max_total_time="$seconds" -dict="$dict" -print_final_stats=1
done
echo
echo "fuzz: every target ran ${seconds} s without a failure"
