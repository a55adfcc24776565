#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests (CI starts one; so can you).
#
#   bash scripts/postgres.sh [start]   install if missing, start, print the SQLAlchemy URL
#   bash scripts/postgres.sh url       print the URL of the running server (exit 1 if none)
#   bash scripts/postgres.sh stop      stop the server (its files stay, for a fast restart)
#
#   export QRADAPTOR_TEST_POSTGRES=$(bash scripts/postgres.sh)
#
# The URL is the only thing written to stdout; progress goes to stderr. The cluster lives in
# $QRADAPTOR_PG_DIR (default ${TMPDIR:-/tmp}/qradaptor-pg-<uid>), is owned by the user
# `postgres` when run as root (the server refuses to run as root), trusts every local
# connection, listens on 127.0.0.1 at $QRADAPTOR_PG_PORT (default 55432, or the next free
# port) and on a unix socket in the same folder, and never fsyncs: it holds nothing worth
# keeping. `start` is idempotent: a server still running from an earlier call is reused.
# Missing PostgreSQL binaries are installed with apt-get (the Debian package `postgresql`).
set -euo pipefail

DIR=${QRADAPTOR_PG_DIR:-${TMPDIR:-/tmp}/qradaptor-pg-$(id -u)}
DATA=$DIR/data
PORT=${QRADAPTOR_PG_PORT:-55432}
DATABASE=qradaptor_test

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The newest server binaries: Debian keeps them off PATH, in /usr/lib/postgresql/<major>/bin.
find_bindir() {
    local candidate
    candidate=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate/initdb && -x $candidate/pg_ctl ]]; then
        echo "$candidate"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
    fi
}

install_postgres() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "PostgreSQL is not installed and we are not root: apt-get install postgresql"
        sudo=(sudo -n)
    fi
    log "installing the Debian package postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # A clean machine often has no package lists yet; update only when the install needs it.
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql >&2; then
        "${sudo[@]}" apt-get update -q >&2
        "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql >&2
    fi
}

# Runs a server binary as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

is_running() { [[ -f $DATA/PG_VERSION ]] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

# Line 4 of postmaster.pid is the port the running server listens on.
running_port() { sed -n 4p "$DATA/postmaster.pid"; }

free_port() {
    python3 - "$1" <<'EOF'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 100):
    with socket.socket() as s:
        # As the server binds: a port left in TIME_WAIT by its last run is free to it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    sys.exit(f"no free port in {start}..{start + 99}")
EOF
}

url_for() { echo "postgresql+psycopg2://postgres@127.0.0.1:$1/$DATABASE"; }

init_cluster() {
    log "creating a cluster in $DATA"
    if [[ -d $DATA && -n $(ls -A "$DATA") ]]; then
        die "$DATA exists and holds no cluster: remove it, or set QRADAPTOR_PG_DIR elsewhere"
    fi
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$DIR"
    fi
    as_owner test -w "$DIR" || die "the user postgres cannot write $DIR: set QRADAPTOR_PG_DIR to a folder it can reach"
    # --no-sync and the settings in start(): a test server, fast and disposable.
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
}

start() {
    if [[ -z $BIN ]]; then
        install_postgres
        BIN=$(find_bindir)
        [[ -n $BIN ]] || die "apt-get installed postgresql but no initdb/pg_ctl was found"
    fi
    # A cluster made by another major version cannot be started by these binaries: start over.
    local major
    major=$("$BIN/pg_ctl" --version | grep -oE '[0-9]+' | head -n 1)
    if [[ -f $DATA/PG_VERSION && $(cat "$DATA/PG_VERSION") != "$major" ]]; then
        is_running && as_owner "$BIN/pg_ctl" stop -D "$DATA" -m immediate >&2 || true
        rm -rf "$DATA"
    fi
    [[ -f $DATA/PG_VERSION ]] || init_cluster
    # A postmaster killed with -9 leaves its pid file, and its pid may live on a moment as a
    # zombie, so pg_ctl still calls it running: ask the port too (pg_isready: 2 = no answer).
    if is_running && { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$(running_port)" -t 3 || [[ $? -ne 2 ]]; }; then
        :
    elif is_running; then
        log "the server in $DATA does not answer: clearing its pid file and starting afresh"
        as_owner "$BIN/pg_ctl" stop -D "$DATA" -m immediate -W >/dev/null 2>&1 || true
        rm -f "$DATA/postmaster.pid" "$DIR"/.s.PGSQL.*
    fi
    if is_running; then
        PORT=$(running_port)
        log "reusing the server already running on port $PORT"
    else
        PORT=$(free_port "$PORT")
        log "starting PostgreSQL ($BIN) on 127.0.0.1:$PORT"
        rm -f "$DIR/server.log"
        as_owner "$BIN/pg_ctl" start -D "$DATA" -w -t 30 -l "$DIR/server.log" -o \
            "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories='$DIR' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            >/dev/null || { tail -n 20 "$DIR/server.log" >&2; die "the server did not start (log above)"; }
    fi
    local exists
    exists=$("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XtAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")
    [[ $exists == 1 ]] || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DATABASE"
    url_for "$PORT"
}

BIN=$(find_bindir)
case ${1:-start} in
    start) start ;;
    url)
        [[ -n $BIN ]] && is_running || die "no server running in $DATA: bash scripts/postgres.sh start"
        url_for "$(running_port)"
        ;;
    stop)
        if [[ -n $BIN ]] && is_running; then
            as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast >/dev/null
            log "stopped the server in $DATA"
        else
            log "no server running in $DATA"
        fi
        ;;
    *) die "unknown command '$1': use start, url or stop" ;;
esac
