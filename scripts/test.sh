#!/usr/bin/env bash
# Sets up and runs the whole test suite: dcmtk as scanner and PACS, dciodvfy, and a real PostgreSQL
# server started here so that the index tests run on SQLite and on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-postgres

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_dir=$(mktemp -d /tmp/immunode-pg.XXXXXX)
pg_port=${IMMUNODE_TEST_PG_PORT:-54329}
chown postgres "$pg_dir" 2>/dev/null || true
as_pg() { if [[ $(id -u) -eq 0 ]]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
as_pg "$pg_bin/initdb -D $pg_dir/data -A trust -U postgres >/dev/null"
as_pg "$pg_bin/pg_ctl -D $pg_dir/data -o '-p $pg_port -k $pg_dir -c listen_addresses=' -l $pg_dir/log -w start >/dev/null"
trap 'as_pg "$pg_bin/pg_ctl -D $pg_dir/data -m fast stop" >/dev/null 2>&1 || true' EXIT
as_pg "$pg_bin/createdb -h $pg_dir -p $pg_port -U postgres immunode_test"
export IMMUNODE_TEST_DATABASE_URL="postgresql+psycopg://postgres@/immunode_test?host=$pg_dir&port=$pg_port"

# Two processes (pytest-xdist; each with its own PostgreSQL database, tests/conftest.py), a test file's tests
# together in one of them (its module fixtures: Orthanc, OHIF, a Dask cluster start once).
.venv/bin/python -m pytest -p no:cacheprovider -n "${IMMUNODE_TEST_PROCESSES:-2}" --dist loadfile "$@"
