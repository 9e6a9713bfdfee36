#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL server for the test suite.
#
# Usage, executed:
#   url="$(bash .ci/start-postgres.sh)"      # start or reuse; prints the URL on stdout
#   bash .ci/start-postgres.sh url            # print the URL of the running server
#   bash .ci/start-postgres.sh status         # exit 0 if the recorded server answers
#   bash .ci/start-postgres.sh stop           # stop it and delete its data dir
# Usage, sourced (pass the sub-command explicitly, the caller's "$@" leaks in otherwise):
#   source .ci/start-postgres.sh start        # also exports PERSISTQ_TEST_PG_URL
#   source .ci/start-postgres.sh stop         # also unsets PERSISTQ_TEST_PG_URL
#
# The server: PostgreSQL from Debian's packages (installed with apt-get when no
# /usr/lib/postgresql/*/bin has initdb and pg_ctl; the highest version is used), run
# as the `postgres` user when we are root, data dir in a fresh /tmp/persistq-pg.XXXXXX,
# trust auth, listening on 127.0.0.1 only (port 54329, or the next free one), unix
# socket in that temp dir, fsync off, max_connections=200, database persistq_test
# owned by postgres.  URL: postgresql+asyncpg://postgres@127.0.0.1:PORT/persistq_test
#
# The temp dir path is recorded in $PERSISTQ_PG_STATE (default /tmp/persistq-pg.path);
# a second start reuses the recorded server if it answers.  Logs go to stderr, the
# server's own log to <temp dir>/server.log.
#
# Knobs (env): PERSISTQ_PG_PORT (first port to try, default 54329),
#              PERSISTQ_PG_BINDIR (use this bin dir instead of searching),
#              PERSISTQ_PG_STATE (state file path).

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: run ourselves as a child process (so no `set -e`, functions or variables
    # leak into the caller) and export the URL it prints.
    case "${1:-}" in
        stop)
            bash "${BASH_SOURCE[0]}" stop
            _persistq_pg_rc=$?
            unset PERSISTQ_TEST_PG_URL
            ;;
        status)
            bash "${BASH_SOURCE[0]}" status
            _persistq_pg_rc=$?
            ;;
        *)  # start, url, or nothing (or the caller's unrelated arguments)
            _persistq_pg_sub=start
            [[ "${1:-}" == url ]] && _persistq_pg_sub=url
            if _persistq_pg_url="$(bash "${BASH_SOURCE[0]}" "$_persistq_pg_sub")"; then
                export PERSISTQ_TEST_PG_URL="$_persistq_pg_url"
                printf '%s\n' "$PERSISTQ_TEST_PG_URL"
                _persistq_pg_rc=0
            else
                _persistq_pg_rc=1
                echo "[start-postgres] failed; PERSISTQ_TEST_PG_URL not set" >&2
            fi
            unset _persistq_pg_url _persistq_pg_sub
            ;;
    esac
    # shellcheck disable=SC2317  # reachable: `return` works only when sourced
    return "$_persistq_pg_rc" 2>/dev/null || true
fi

set -euo pipefail

STATE_FILE="${PERSISTQ_PG_STATE:-/tmp/persistq-pg.path}"
FIRST_PORT="${PERSISTQ_PG_PORT:-54329}"
DB_NAME=persistq_test
DB_USER=postgres
HOST=127.0.0.1

log() { printf '[start-postgres] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a command as the server's OS user: `postgres` when we are root, ourselves otherwise.
# cd / first so that a cwd the postgres user cannot read (e.g. /root) does not matter.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

find_bindir() {
    if [[ -n "${PERSISTQ_PG_BINDIR:-}" ]]; then
        [[ -x "$PERSISTQ_PG_BINDIR/initdb" && -x "$PERSISTQ_PG_BINDIR/pg_ctl" ]] \
            || die "PERSISTQ_PG_BINDIR=$PERSISTQ_PG_BINDIR has no initdb/pg_ctl"
        printf '%s\n' "$PERSISTQ_PG_BINDIR"
        return 0
    fi
    local d best=""
    # Highest version first (sort -V), keep the first one that has both tools.
    while IFS= read -r d; do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            best="$d"
            break
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    [[ -n "$best" ]] || return 1
    printf '%s\n' "$best"
}

install_postgres() {
    is_root || die "PostgreSQL is not installed and we are not root; install Debian's 'postgresql' package"
    log "no initdb/pg_ctl under /usr/lib/postgresql/*/bin: installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # postgresql-common first, so that the package's own "main" cluster (a second server
    # on port 5432 that nothing here uses) is not created when postgresql goes in.
    apt-get install -y -q --no-install-recommends postgresql-common >&2
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -q postgresql >&2
}

ensure_pg_user() {
    is_root || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    log "creating system user postgres"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

port_free() {
    local port="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
    elif command -v ss >/dev/null 2>&1; then
        [[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 1; fi
    fi
}

pick_port() {
    local port="$1" last=$(( $1 + 200 ))
    while (( port <= last )); do
        if port_free "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
        port=$(( port + 1 ))
    done
    die "no free TCP port in $1..$last"
}

url_for() { printf 'postgresql+asyncpg://%s@%s:%s/%s\n' "$DB_USER" "$HOST" "$1" "$DB_NAME"; }

# The recorded temp dir, if the state file names one of ours that still exists.
recorded_base() {
    [[ -f "$STATE_FILE" ]] || return 1
    local base
    base="$(head -n1 "$STATE_FILE")"
    [[ "$base" == /tmp/persistq-pg.* && -d "$base" ]] || return 1
    printf '%s\n' "$base"
}

# Exit 0 if the server recorded in $1 answers.
answers() {
    local base="$1" bindir port
    [[ -f "$base/port" && -f "$base/bindir" ]] || return 1
    port="$(cat "$base/port")"
    bindir="$(cat "$base/bindir")"
    [[ -x "$bindir/pg_isready" ]] || return 1
    "$bindir/pg_isready" -q -h "$HOST" -p "$port" -U "$DB_USER" -d postgres -t 3 || return 1
    as_pg "$bindir/pg_ctl" status -D "$base/data" >/dev/null 2>&1
}

# stop_base DIR [fast|immediate]: stop the server in DIR (if any) and delete DIR.
stop_base() {
    local base="$1" mode="${2:-fast}" bindir
    if [[ -f "$base/bindir" && -f "$base/data/postmaster.pid" ]]; then
        bindir="$(cat "$base/bindir")"
        log "stopping server in $base ($mode)"
        if [[ "$mode" == fast ]]; then
            as_pg "$bindir/pg_ctl" stop -D "$base/data" -m fast -w -t 30 >&2 && mode=stopped
        fi
        if [[ "$mode" != stopped ]]; then
            as_pg "$bindir/pg_ctl" stop -D "$base/data" -m immediate -w -t 10 >&2 \
                || log "pg_ctl stop failed (server already gone?)"
        fi
    fi
    rm -rf -- "$base"
}

ensure_db() {
    local bindir="$1" port="$2" exists
    exists="$("$bindir/psql" -h "$HOST" -p "$port" -U "$DB_USER" -d postgres -XAtq \
        -c "select 1 from pg_database where datname = '$DB_NAME'")"
    if [[ "$exists" != 1 ]]; then
        log "creating database $DB_NAME"
        "$bindir/createdb" -h "$HOST" -p "$port" -U "$DB_USER" -O "$DB_USER" "$DB_NAME"
    fi
}

wait_ready() {
    local bindir="$1" port="$2" i
    for (( i = 0; i < 60; i++ )); do
        if "$bindir/pg_isready" -q -h "$HOST" -p "$port" -U "$DB_USER" -d postgres -t 1; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

cmd_start() {
    local base bindir port attempt
    if base="$(recorded_base)"; then
        if answers "$base"; then
            port="$(cat "$base/port")"
            bindir="$(cat "$base/bindir")"
            log "reusing running server in $base (port $port)"
            ensure_db "$bindir" "$port"
            url_for "$port"
            return 0
        fi
        log "recorded server in $base does not answer: discarding it"
        stop_base "$base" immediate
    fi
    rm -f -- "$STATE_FILE"

    bindir="$(find_bindir)" || { install_postgres; bindir="$(find_bindir)" \
        || die "no initdb/pg_ctl under /usr/lib/postgresql/*/bin even after apt-get install"; }
    ensure_pg_user
    log "using $("$bindir/postgres" --version) from $bindir"

    port=$(( FIRST_PORT - 1 ))
    for attempt in 1 2 3; do
        port="$(pick_port $(( port + 1 )))"
        base="$(mktemp -d /tmp/persistq-pg.XXXXXX)"
        # Record it at once so `stop` can clean up even if what follows fails.
        printf '%s\n' "$base" > "$STATE_FILE"
        printf '%s\n' "$port" > "$base/port"
        printf '%s\n' "$bindir" > "$base/bindir"
        is_root && chown -R postgres: "$base"
        chmod 700 "$base"

        log "initdb in $base/data"
        as_pg "$bindir/initdb" -D "$base/data" -U "$DB_USER" --auth=trust \
            -E UTF8 --locale=C --no-instructions >"$base/initdb.log" 2>&1 \
            || { cat "$base/initdb.log" >&2; stop_base "$base"; die "initdb failed"; }
        cat >>"$base/data/postgresql.conf" <<EOF

# --- persistq throwaway test server ---
listen_addresses = '$HOST'
port = $port
unix_socket_directories = '$base'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        # initdb --auth=trust already trusts every local and host line; make it explicit.
        cat >"$base/data/pg_hba.conf" <<EOF
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
host    all   all   ::1/128        trust
EOF

        log "starting on $HOST:$port (attempt $attempt)"
        if as_pg "$bindir/pg_ctl" start -D "$base/data" -l "$base/server.log" -w -t 30 >&2 \
            && wait_ready "$bindir" "$port"; then
            ensure_db "$bindir" "$port"
            log "ready; stop with: bash .ci/start-postgres.sh stop"
            url_for "$port"
            return 0
        fi
        log "server did not start; its log:"
        tail -n 30 "$base/server.log" >&2 2>/dev/null || true
        stop_base "$base" immediate
        rm -f -- "$STATE_FILE"
    done
    die "could not start PostgreSQL"
}

cmd_stop() {
    local base
    if base="$(recorded_base)"; then
        stop_base "$base"
        log "stopped"
    else
        log "no recorded server: nothing to stop"
    fi
    rm -f -- "$STATE_FILE"
}

cmd_url() {
    local base
    if ! base="$(recorded_base)" || ! answers "$base"; then
        die "no running server recorded in $STATE_FILE"
    fi
    url_for "$(cat "$base/port")"
}

cmd_status() {
    local base
    if base="$(recorded_base)" && answers "$base"; then
        log "running in $base: $(url_for "$(cat "$base/port")")"
        return 0
    fi
    log "not running"
    return 1
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    url) cmd_url ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|stop|url|status]" ;;
esac
