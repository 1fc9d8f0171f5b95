#!/usr/bin/env bash
# Schema-driven run of docs/openapi.yaml against a real `fieldsync server`
# on loopback (schemathesis, pinned in requirements-schemathesis.txt): every
# operation of the file gets generated requests, valid and invalid, and
# every answer is checked against the file (status codes, content types,
# headers, body schemas), for server errors, and for invalid requests the
# server accepted. Exits non-zero on any failure.
#
# Two passes on one fresh server: the device and records routes with a
# technician's token, then the admin routes with the admin token (after the
# first, since they rotate and delete users). Not checked: that every
# schema-valid request is accepted (`positive_data_acceptance`); validity
# there depends on the server's state (a table of the data model, a user
# that exists), which a schema cannot say. Nor is `POST /v1/admin/seed`
# run: it generates data sets of up to two million work orders
# (tests/backbone.rs and the demo exercise it).
#
#   scripts/schemathesis.sh            # uses target/debug/fieldsync
#   FIELDSYNC_BIN=path scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r scripts/requirements-schemathesis.txt >/dev/null

bin=${FIELDSYNC_BIN:-$root/target/debug/fieldsync}
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

admin=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
# Generated requests carry wrong credentials on purpose: the sign-in
# limiter would answer them (and the right ones after them) 429.
FIELDSYNC_ADMIN_TOKEN=$admin "$bin" server --data-dir "$work/data" --listen 127.0.0.1:0 \
  --sign-in-burst 1000000 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/server.out" ] && break
  sleep 0.1
done
url="http://$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["address"])' "$work/server.out")"

call() { curl -sf -H "Authorization: Bearer $admin" -H 'content-type: application/json' "$@"; }
tech=$(call -d '{"id":"tech-1","name":"Technician 1","role":"technician"}' "$url/v1/admin/users" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
call -d '{"technicians":["tech-1"],"work_orders":20,"seed":1}' "$url/v1/admin/seed" >/dev/null
# A Sync Errors entry (a refused change) for the retry route to find.
curl -sf -H "Authorization: Bearer $tech" -H 'content-type: application/json' "$url/v1/sync/push" \
  -d '{"mutations":[{"idempotency_key":"st-1","table":"work_orders","id":"wo-st-1","op":"insert","base_version":0,"data":{"no_such_column":1}}]}' >/dev/null

run() {
  (cd "$work" && st run "$root/docs/openapi.yaml" --url "$url" --no-color \
    --exclude-checks positive_data_acceptance --max-examples 25 --seed 1 --workers 1 \
    --generation-database none --request-timeout 30 "$@")
}
echo "==> schemathesis: device and records routes (technician)"
run -H "Authorization: Bearer $tech" --exclude-path-regex '^/v1/admin'
echo "==> schemathesis: admin routes (admin token)"
run -H "Authorization: Bearer $admin" --include-path-regex '^/v1/admin' --exclude-path /v1/admin/seed
