#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh: a second start installs nothing) and starts the node on its
# embedded defaults (SQLite and ./immunode-data), or with the config file given as IMMUNODE_CONFIG. Stop with
# Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/immunode serve "$@"
