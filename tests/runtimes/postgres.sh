#!/usr/bin/env bash
# A real PostgreSQL for an MLflow tracking server in the tests, as root on Debian 12.
#
# Usage: tests/runtimes/postgres.sh start DIR PORT
#        tests/runtimes/postgres.sh stop DIR
#
# start installs Debian's postgresql when missing, makes a cluster in DIR/data (initdb as
# the postgres user), serves it on 127.0.0.1:PORT only (password auth over TCP, trust on
# its unix socket in DIR/run), creates the role and database mlflow (password mlflow),
# and writes
#   DIR/uri   postgresql://mlflow:mlflow@127.0.0.1:PORT/mlflow (also printed on stdout)
#   DIR/pid   the postmaster's pid, which stop reads.
# MLflow needs a driver in its own environment for this URI: psycopg2-binary.
# start on a server that already runs from DIR on PORT prints the URI and returns; stop
# shuts the server down by pid (fast shutdown, then immediate, then KILL) and keeps
# DIR/log and the data.
#
# The postgres user must be able to enter DIR: every directory above it needs execute
# permission for others (pytest's /tmp/pytest-of-root is 0700). start says which one
# blocks, or grants o+x to them itself when PGRT_GRANT_TRAVERSE=1.
# Environment: PGRT_TIMEOUT seconds to wait for the server (default 60).
set -euo pipefail

PROG=postgres.sh
TIMEOUT="${PGRT_TIMEOUT:-60}"
PG_USER=postgres

die() { echo "$PROG: $1" >&2; exit "${2:-1}"; }

usage() { die "usage: $PROG start DIR PORT | stop DIR" 2; }

show_log() {
  [ -s "$DIR/log/postgres.log" ] || return 0
  echo "----- last lines of $DIR/log/postgres.log -----" >&2
  tail -n 25 "$DIR/log/postgres.log" >&2
}

# The pid only counts while it is still our postmaster; zombies (nobody may reap them in
# this sandbox) are already dead.
alive() {
  local pid=$1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
  ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null
}

gone() {
  local pid
  for pid in "$@"; do
    if [ -d "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null; then
      return 1
    fi
  done
}

wait_gone() {
  local deadline=$((SECONDS + $1))
  shift
  until gone "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

recorded_pid() { cat "$DIR/pid" 2>/dev/null || true; }

find_bindir() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && best=$d
  done
  # The glob sorts 15 after 14, but 9.6 after 16; Debian 12 ships only 15.
  echo "$best"
}

install_packages() {
  [ -n "$(find_bindir)" ] && command -v psql >/dev/null && command -v pg_isready >/dev/null && return 0
  echo "$PROG: installing postgresql" >&2
  command -v apt-get >/dev/null || die "needs apt-get (Debian 12) to install postgresql"
  # The package would create and start a system cluster on port 5432; policy-rc.d stops
  # the start, and the cluster stays down and unused.
  local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
        --no-install-recommends install postgresql postgresql-client >"$DIR/log/apt.log" 2>&1
  } || rc=$?
  [ "$own_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || { tail -n 25 "$DIR/log/apt.log" >&2; die "apt-get install postgresql failed"; }
}

# initdb and postgres refuse to run as root, so the postgres user must reach DIR.
check_traverse() {
  local d=$DIR blocked=()
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups test -x "$d" || blocked+=("$d")
  done
  [ "${#blocked[@]}" -gt 0 ] || return 0
  if [ "${PGRT_GRANT_TRAVERSE:-0}" = 1 ]; then
    echo "$PROG: granting o+x (enter, not list) on ${blocked[*]} so that $PG_USER reaches $DIR" >&2
    chmod o+x "${blocked[@]}"
  else
    die "user $PG_USER cannot enter ${blocked[*]} (above $DIR); choose another DIR, chmod o+x them, or set PGRT_GRANT_TRAVERSE=1"
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_pg() { setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups "$@"; }

start_server() {
  local pid port_file bindir deadline t0=$SECONDS
  pid=$(recorded_pid)
  if alive "$pid"; then
    port_file=$(sed -n 4p "$DIR/data/postmaster.pid" 2>/dev/null || true)
    [ "$port_file" = "$PORT" ] || die "already running from $DIR (pid $pid) on port $port_file, not $PORT; stop it first"
    echo "$PROG: already running from $DIR (pid $pid)" >&2
    cat "$DIR/uri"
    echo
    return 0
  fi
  rm -f "$DIR/pid"

  install_packages
  bindir=$(find_bindir)
  [ -n "$bindir" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (the postgresql package creates it)"
  port_free "$PORT" || die "port $PORT on 127.0.0.1 is taken"
  check_traverse
  # The socket directory must be writable by the server, and DIR enterable by it.
  chmod o+x "$DIR"
  mkdir -p "$DIR/run"
  chown "$PG_USER:" "$DIR/run" "$DIR/log"

  if [ ! -s "$DIR/data/PG_VERSION" ]; then
    mkdir -p "$DIR/data"
    chown "$PG_USER:" "$DIR/data"
    chmod 700 "$DIR/data"
    as_pg "$bindir/initdb" -D "$DIR/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$DIR/log/initdb.log" 2>&1 \
      || { tail -n 25 "$DIR/log/initdb.log" >&2; die "initdb failed"; }
    # Only loopback TCP, by password; the unix socket in DIR/run is trusted for setup.
    cat >"$DIR/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
  fi

  # In its own session, so a test runner's Ctrl-C does not reach it; setpriv execs, so
  # $! is the postmaster itself. fsync=off: a throwaway database, speed over durability.
  setsid setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups \
    "$bindir/postgres" -D "$DIR/data" -c listen_addresses=127.0.0.1 -c port="$PORT" \
    -c unix_socket_directories="$DIR/run" -c logging_collector=off -c fsync=off \
    </dev/null >>"$DIR/log/postgres.log" 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/pid"
  trap 'rc=$?; if [ "$rc" != 0 ]; then stop_server 2>/dev/null || true; fi' EXIT

  deadline=$((SECONDS + TIMEOUT))
  until pg_isready -q -h 127.0.0.1 -p "$PORT" -t 2; do
    alive "$pid" || { show_log; die "postgres (pid $pid) exited during start-up; log: $DIR/log/postgres.log"; }
    [ "$SECONDS" -lt "$deadline" ] \
      || { show_log; die "postgres (pid $pid) not ready after ${TIMEOUT}s; log: $DIR/log/postgres.log"; }
    sleep 0.3
  done

  psql -q -X -v ON_ERROR_STOP=1 -h "$DIR/run" -p "$PORT" -U postgres -d postgres >/dev/null <<'EOF'
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow')
\gexec
ALTER ROLE mlflow PASSWORD 'mlflow';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')
\gexec
EOF
  # The check a client makes: TCP, password, the mlflow database.
  PGPASSWORD=mlflow psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U mlflow -d mlflow \
    -c 'SELECT 1' >/dev/null || die "mlflow cannot log in over 127.0.0.1:$PORT"

  printf 'postgresql://mlflow:mlflow@127.0.0.1:%s/mlflow' "$PORT" >"$DIR/uri"
  trap - EXIT
  echo "$PROG: postgres (pid $pid) up on 127.0.0.1:$PORT in $((SECONDS - t0)) s" >&2
  cat "$DIR/uri"
  echo
}

stop_server() {
  local pid kids=()
  pid=$(recorded_pid)
  if ! alive "$pid"; then
    echo "$PROG: no server running from $DIR" >&2
    rm -f "$DIR/pid"
    return 0
  fi
  # The postmaster's children (checkpointer, backends) end after it; remember them to
  # wait for them too.
  mapfile -t kids < <(ps -o pid= --ppid "$pid" | tr -d ' ')
  # SIGINT is the fast shutdown: open connections (an MLflow server still running) would
  # hold off the smart shutdown that SIGTERM asks for.
  kill -INT "$pid" 2>/dev/null || true
  if ! wait_gone 30 "$pid" "${kids[@]}"; then
    echo "$PROG: postgres (pid $pid) still running after 30 s; immediate shutdown" >&2
    kill -QUIT "$pid" 2>/dev/null || true
    if ! wait_gone 10 "$pid" "${kids[@]}"; then
      kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
      wait_gone 10 "$pid" "${kids[@]}" || die "could not stop postgres (pid $pid)"
    fi
  fi
  rm -f "$DIR/pid"
}

[ "$#" -ge 2 ] || usage
CMD=$1
[ "$(id -u)" = 0 ] || die "must run as root (it switches to the postgres user)" 2
case "$2" in *[[:space:],]*) die "DIR must not contain whitespace or commas" 2 ;; esac
mkdir -p "$2/log"
DIR=$(cd "$2" && pwd -P)
case "$CMD" in
  start)
    [ "$#" -eq 3 ] || usage
    PORT=$3
    [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "PORT must be 1-65535" 2
    # The socket file DIR/run/.s.PGSQL.PORT must fit the 107 bytes of a unix socket path.
    [ $((${#DIR} + 20)) -le 107 ] || die "DIR $DIR is too long for a unix socket path under it" 2
    start_server
    ;;
  stop)
    [ "$#" -eq 2 ] || usage
    stop_server
    ;;
  *) usage ;;
esac
