#!/usr/bin/env bash
# Postgres runs this once, on the first start of an empty data volume (/docker-entrypoint-initdb.d):
# one role and one database for Airflow's metadata, one for MLflow's backend store.
# The passwords come from the environment; psql's :'name' interpolation quotes them as SQL literals,
# so nothing secret is written into this file and no quoting breaks on odd characters.
set -eo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD must be set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set}"

psql --no-psqlrc -v ON_ERROR_STOP=1 \
     --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v airflow_password="${AIRFLOW_DB_PASSWORD}" \
     -v mlflow_password="${MLFLOW_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
