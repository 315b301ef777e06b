#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 cluster on loopback for the storage tests and prints
# `KILN_TEST_DATABASE_URL=...` for the caller to eval. Idempotent.
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
bin=/usr/lib/postgresql/$ver/bin
dir=/tmp/kiln-ci-pg
port=${KILN_CI_PG_PORT:-55432}
if ! [ -f "$dir/PG_VERSION" ]; then
  rm -rf "$dir"; mkdir -p "$dir"; chown postgres "$dir"
  su postgres -s /bin/sh -c "$bin/initdb -D $dir -A trust -U postgres" >/dev/null
fi
if ! su postgres -s /bin/sh -c "$bin/pg_ctl -D $dir status" >/dev/null 2>&1; then
  su postgres -s /bin/sh -c "$bin/pg_ctl -D $dir -l $dir/log -w -o '-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off' start" >/dev/null
fi
echo "KILN_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
