#!/usr/bin/env bash
# Sets up a throwaway local PostgreSQL for the gateway's tests, idempotently.
#
#   scripts/pg.sh [DATA_DIR]        (default: $HOME/.cache/sortition/pg)
#
# Installs PostgreSQL with apt only when it is missing (running `apt-get update` only when the
# install fails without it), initializes a cluster in DATA_DIR owned by the `postgres` user when
# run as root (postgres refuses to run as root), starts it on 127.0.0.1:54329 with its unix
# socket in DATA_DIR, creates the role and the database `sortition_test`, and prints the URL:
#
#   export SORTITION_TEST_PG_URL=$(scripts/pg.sh)
#
# Everything but the URL goes to stderr. Running it again reuses the running server.
# Env overrides: SORTITION_PG_PORT, SORTITION_PG_USER, SORTITION_PG_PASSWORD, SORTITION_PG_DB.
set -euo pipefail

PGDIR="${1:-${HOME}/.cache/sortition/pg}"
PORT="${SORTITION_PG_PORT:-54329}"
DB_USER="${SORTITION_PG_USER:-sortition}"
DB_PASS="${SORTITION_PG_PASSWORD:-sortition-test-pw}"
DB_NAME="${SORTITION_PG_DB:-sortition_test}"

log() { echo "pg.sh: $*" >&2; }

find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
        echo "$d"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    else
        return 1
    fi
}

if ! BINDIR=$(find_bindir); then
    log "PostgreSQL is not installed; installing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y postgresql >&2; then
        log "install failed; running apt-get update and retrying"
        apt-get update >&2
        apt-get install -y postgresql >&2
    fi
    BINDIR=$(find_bindir)
fi

# Run a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
if [[ "$(id -u)" == "0" ]]; then
    OWNER=postgres
    as_owner() { runuser -u postgres -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

mkdir -p "$PGDIR"
PGDIR=$(cd "$PGDIR" && pwd)
if [[ "$OWNER" == "postgres" ]]; then
    chown postgres:postgres "$PGDIR"
    # The postgres user must be able to traverse every ancestor (e.g. /root is 0700).
    # Grant only the search bit (o+x), never read, on those that block it.
    dir="$PGDIR"
    while [[ "$dir" != "/" ]]; do
        dir=$(dirname "$dir")
        if ! runuser -u postgres -- test -x "$dir"; then
            log "granting o+x (traverse only) on $dir so the postgres user can reach $PGDIR"
            chmod o+x "$dir"
        fi
    done
fi
chmod 0700 "$PGDIR"

if [[ ! -f "$PGDIR/PG_VERSION" ]]; then
    log "initializing a cluster in $PGDIR"
    as_owner "$BINDIR/initdb" -D "$PGDIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >&2
fi

if as_owner "$BINDIR/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
    log "server already running in $PGDIR"
else
    log "starting the server on 127.0.0.1:$PORT"
    as_owner "$BINDIR/pg_ctl" -D "$PGDIR" -l "$PGDIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PGDIR -c max_connections=200" start >&2
fi

psql_admin() {
    as_owner "$BINDIR/psql" -h "$PGDIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"
}

if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]]; then
    log "creating role $DB_USER"
    psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN PASSWORD '$DB_PASS'" >&2
else
    psql_admin -c "ALTER ROLE \"$DB_USER\" WITH LOGIN PASSWORD '$DB_PASS'" >&2
fi
if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]]; then
    log "creating database $DB_NAME"
    psql_admin -c "CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\"" >&2
fi

echo "postgres://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME"
