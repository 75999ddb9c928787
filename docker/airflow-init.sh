#!/usr/bin/env bash
# One-shot set-up that every other Airflow service waits for (depends_on: service_completed_successfully):
# migrate the metadata schema, create the one-slot pool that serialises DuckDB writers, and write the
# admin's password for the simple auth manager. Safe to run again: each step is idempotent, and a new
# AIRFLOW_ADMIN_PASSWORD in .env replaces the old one on the next run.
set -euo pipefail

: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD must be set}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the passwords file location must be set}"

mkdir -p "${AIRFLOW_HOME}" "${RECSYS_HOME}/landing" "${RECSYS_HOME}/warehouse" "${RECSYS_HOME}/mlflow/artifacts"

airflow db migrate
# One slot: the warehouse is one DuckDB file and DuckDB allows one writing process at a time.
airflow pools set recsys_duckdb 1 "one DuckDB writer at a time"

# The simple auth manager reads {"user": "password"} from this file; 0600 because it is plaintext.
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ.get("AIRFLOW_ADMIN_USER") or "admin"
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as out:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, out)
os.chmod(path, 0o600)
print(f"airflow-init: password of {user!r} written to {path}")
PY
