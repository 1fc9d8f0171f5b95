#!/usr/bin/env bash
# Runs every benchmark of fieldsync and prints each figure with its ratio to
# the limit measured in the same run (docs/performance.md takes its figures
# from this output):
#   1. the sync benchmark (benches/sync.rs) at 100k and 1M device rows, or
#      the sizes in FIELDSYNC_BENCH_ROWS (3M: FIELDSYNC_BENCH_ROWS=100000,1000000,3000000);
#   2. the fleet and push benchmark (benches/fleet.rs) on SQLite;
#   3. the same on a throwaway PostgreSQL cluster (scripts/with-postgres.sh);
#   4. local queries and observers on a 1M-row table (benches/local.rs).
# Release build; run it on a quiet machine (the figures move with the load).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> sync: initial, incremental and upload, beside SQLite's and HTTP's limits"
nice -n 5 cargo bench --locked --bench sync
echo "==> fleet and push on SQLite"
nice -n 5 cargo bench --locked --bench fleet
echo "==> fleet and push on PostgreSQL"
scripts/with-postgres.sh nice -n 5 cargo bench --locked --bench fleet
echo "==> local queries and observers"
nice -n 5 cargo bench --locked --bench local
