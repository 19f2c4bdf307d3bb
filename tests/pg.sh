#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, from the system's binaries, as a non-root user, on a
# free port under a temp dir.
#
#   eval "$(tests/pg.sh up)"      # init + start; prints the exports below
#   tests/pg.sh stop  DIR         # stop the server (the fault tests do this mid-run)
#   tests/pg.sh start DIR         # start it again, same port and data
#   tests/pg.sh env   DIR         # print the exports again
#   tests/pg.sh down  DIR         # stop and delete everything
#
# Exports: LOKA_TEST_DATABASE_URL (a database for the tests; tests create more databases
# beside it), LOKA_TEST_PG_DIR (the DIR above). Installs PostgreSQL with apt-get if no
# initdb/pg_ctl is found. As root, the server runs as the system user `lokatest`.
set -euo pipefail

PG_USER="${LOKA_TEST_PG_USER:-lokatest}"

find_bin() {
    local name="$1" d
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    for d in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
        if [ -x "$d/$name" ]; then echo "$d/$name"; return; fi
    done
    return 1
}

ensure_binaries() {
    if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null; then
        echo "pg.sh: PostgreSQL not found; installing it with apt-get" >&2
        if [ "$(id -u)" -ne 0 ]; then
            echo "pg.sh: need root to apt-get install postgresql" >&2
            exit 1
        fi
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    INITDB="$(find_bin initdb)"
    PG_CTL="$(find_bin pg_ctl)"
}

# Run as the database user (root cannot run postgres).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

print_env() {
    local dir="$1" port
    port="$(cat "$dir/port")"
    echo "export LOKA_TEST_DATABASE_URL=postgres://$(cat "$dir/user")@127.0.0.1:$port/loka_test"
    echo "export LOKA_TEST_PG_DIR=$dir"
}

start() {
    local dir="$1"
    ensure_binaries
    if as_pg "$PG_CTL" -D "$dir/data" status >/dev/null 2>&1; then
        return 0 # already running
    fi
    as_pg "$PG_CTL" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $(cat "$dir/port") -k $dir -c listen_addresses=127.0.0.1" start >&2
}

stop() {
    local dir="$1"
    ensure_binaries
    as_pg "$PG_CTL" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
}

up() {
    ensure_binaries
    local user="$PG_USER"
    if [ "$(id -u)" -eq 0 ]; then
        id -u "$PG_USER" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$PG_USER"
    else
        user="$(id -un)"
    fi
    local dir
    dir="$(mktemp -d /tmp/loka-pg.XXXXXX)"
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$dir"
    echo "$user" > "$dir/user"
    free_port > "$dir/port"
    as_pg "$INITDB" -D "$dir/data" -U "$user" --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    cat >> "$dir/data/postgresql.conf" <<CONF
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
max_wal_size = 2GB
log_min_messages = warning
CONF
    start "$dir"
    local psql
    psql="$(find_bin psql)"
    as_pg "$psql" -h 127.0.0.1 -p "$(cat "$dir/port")" -U "$user" -d postgres -qc "CREATE DATABASE loka_test" >&2
    print_env "$dir"
}

cmd="${1:-up}"
case "$cmd" in
    up) up ;;
    start) start "${2:?DIR}" ;;
    stop) stop "${2:?DIR}" ;;
    env) print_env "${2:?DIR}" ;;
    down)
        stop "${2:?DIR}"
        rm -rf "${2:?DIR}"
        ;;
    *)
        sed -n '2,16p' "$0"
        exit 64
        ;;
esac
