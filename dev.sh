#!/usr/bin/env bash
# Set everything up and run Switchboard on embedded defaults: SQLite under var/, a bundled Redis (unless
# REDIS_URL is set), a demo tenant on the built-in CRM, web + worker + cron. Ctrl+C stops it all.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh
bootstrap_venv ""
exec .venv/bin/switchboard run "$@"
