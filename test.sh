#!/usr/bin/env bash
# Run the whole test suite (lint, format check, pytest) against real Redis and real SQLite + PostgreSQL.
# Starts Redis and PostgreSQL when they are installed but not running. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh
bootstrap_venv "[dev]"
PY=.venv/bin/python

port_open() { "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))))" "$1"; }

# --- Redis: TEST_REDIS_URL, else 127.0.0.1:6379 (started if needed), else the redis-server bundled in .venv
if [ -z "${TEST_REDIS_URL:-}" ]; then
  if ! port_open 6379 && command -v redis-server >/dev/null 2>&1; then
    echo "==> starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/switchboard-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/switchboard-redis --logfile /tmp/switchboard-redis/redis.log
    for _ in $(seq 50); do port_open 6379 && break; sleep 0.1; done
  fi
  if ! port_open 6379; then
    BUNDLED=$("$PY" -c "from app.cli.devrunner import redis_server_binary; print(redis_server_binary())")
    echo "==> starting the bundled redis-server on 127.0.0.1:6391"
    mkdir -p var/test-redis
    "$BUNDLED" --daemonize yes --bind 127.0.0.1 --port 6391 --save "" --appendonly no \
      --dir "$PWD/var/test-redis" --logfile "$PWD/var/test-redis/redis.log"
    for _ in $(seq 50); do port_open 6391 && break; sleep 0.1; done
    export TEST_REDIS_URL=redis://127.0.0.1:6391
  fi
fi

# --- PostgreSQL: TEST_POSTGRES_URL, else 127.0.0.1:5432 (started with pg_ctlcluster if installed)
if [ -z "${TEST_POSTGRES_URL:-}" ] && ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "==> starting PostgreSQL"
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 100); do port_open 5432 && break; sleep 0.1; done
  fi
  if ! port_open 5432; then
    if [ -n "${CI:-}" ]; then
      echo "PostgreSQL is required in CI (127.0.0.1:5432 or TEST_POSTGRES_URL)." >&2; exit 1
    fi
    echo "!! PostgreSQL is not reachable: its half of the suite will be skipped (CI runs it)." >&2
  fi
fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> import contracts"
.venv/bin/lint-imports --no-cache
echo "==> pytest"
exec "$PY" -m pytest "$@"
