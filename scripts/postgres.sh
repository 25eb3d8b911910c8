#!/usr/bin/env bash
# Print the URL of a fresh, empty PostgreSQL database for tests and development.
#
#   scripts/postgres.sh            -> postgresql+psycopg://postgres@127.0.0.1:PORT/iotrust_test_XXXX
#
# 1. If a server answers on 127.0.0.1:5432 (PGHOST/PGPORT override), create a new database
#    iotrust_test_<random> there as user postgres (PGUSER overrides) and print its URL.
# 2. Otherwise start a private throw-away cluster: install PostgreSQL with apt-get if no initdb
#    exists (needs root), initdb into a temporary directory owned by "postgres" (trust auth,
#    listening on 127.0.0.1 only, on a free port), start it, create the database, print the URL.
#    The data directory is reported on stderr as "pgdata=DIR"; stop the cluster with
#    `runuser -u postgres -- PG_CTL -D DIR stop -m fast` (also reported as "pg_ctl=PATH").
# Only the URL goes to stdout. Exit 69 when no PostgreSQL can be had.
set -euo pipefail

host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
dbname="iotrust_test_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  elif [[ $(id -un) == postgres ]]; then
    "$@"
  else
    echo "a private cluster needs root (to act as user postgres) or user postgres" >&2
    exit 69
  fi
}

bindir() {
  local initdb
  initdb=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n "$initdb" ]] && dirname "$initdb"
}

if command -v pg_isready >/dev/null && pg_isready -q -h "$host" -p "$port" -t 3; then
  createdb -h "$host" -p "$port" -U "$user" "$dbname"
  echo "postgresql+psycopg://${user}@${host}:${port}/${dbname}"
  exit 0
fi

bin=$(bindir || true)
if [[ -z "$bin" ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "PostgreSQL is not installed and installing it needs root" >&2
    exit 69
  fi
  echo "installing PostgreSQL with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  bin=$(bindir || true)
  [[ -n "$bin" ]] || { echo "PostgreSQL installation failed" >&2; exit 69; }
fi
id postgres >/dev/null 2>&1 || { echo "no 'postgres' user after installation" >&2; exit 69; }

datadir=$(mktemp -d /tmp/iotrust-pg.XXXXXX)
chown postgres: "$datadir" 2>/dev/null || true
chmod 700 "$datadir"
free_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

as_postgres "$bin/initdb" -D "$datadir/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
as_postgres "$bin/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 \
  -o "-h 127.0.0.1 -p $free_port -k $datadir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null
echo "pgdata=$datadir/data" >&2
echo "pg_ctl=$bin/pg_ctl" >&2
"$bin/createdb" -h 127.0.0.1 -p "$free_port" -U postgres "$dbname"
echo "postgresql+psycopg://postgres@127.0.0.1:${free_port}/${dbname}"
