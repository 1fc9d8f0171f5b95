#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster on loopback:
#
#   scripts/with-postgres.sh cargo test --test backbone
#
# Installs PostgreSQL from Debian's packages when it is missing, creates a
# cluster in a temporary directory, starts it on 127.0.0.1 on a free port,
# exports FIELDSYNC_TEST_POSTGRES (the cluster's URL; the test suites then
# give every server a database of its own there), runs the command, and
# stops and removes the cluster whatever the command's outcome.
set -euo pipefail

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if ! bindir=$(find_bin); then
  echo "==> installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  bindir=$(find_bin)
fi

# initdb and postgres refuse to run as root: run them as the postgres user
# the Debian package creates.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  as_pg=(runuser -u postgres --)
fi

work=$(mktemp -d /tmp/fieldsync-pg.XXXXXX)
chmod 755 "$work"
[ ${#as_pg[@]} -gt 0 ] && chown postgres "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

stop() {
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop EXIT

# TLS with the tests' certificate for 127.0.0.1 (tests/fixtures/tls): the
# servers under test verify it (FIELDSYNC_DATABASE_CA_FILE below) and, with
# the default sslmode=prefer, connect over TLS.
root=$(cd "$(dirname "$0")/.." && pwd)
cp "$root/tests/fixtures/tls/server.pem" "$root/tests/fixtures/tls/server.key" "$work/"
chmod 600 "$work/server.key"
[ ${#as_pg[@]} -gt 0 ] && chown postgres "$work/server.pem" "$work/server.key"

"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -U postgres --auth=trust \
  --encoding=UTF8 --locale=C >"$work/initdb.log" 2>&1 ||
  { cat "$work/initdb.log" >&2; exit 1; }
# Throwaway cluster: durability off (fsync) for speed; a test of crash
# recovery would need it on.
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w -t 60 \
  -o "-h 127.0.0.1 -p $port -k $work -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c ssl=on -c ssl_cert_file=$work/server.pem -c ssl_key_file=$work/server.key" \
  start >/dev/null ||
  { cat "$work/server.log" >&2; exit 1; }

export FIELDSYNC_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
export FIELDSYNC_DATABASE_CA_FILE="$root/tests/fixtures/tls/ca.pem"
echo "==> PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
"$@"
