# The README's commands. Each target creates .venv with pip when it is missing and installs the
# pinned stack (pyproject.toml) before running.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

export RECSYS_HOME ?= $(CURDIR)/var
export AIRFLOW_HOME ?= $(RECSYS_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PATH := $(BIN):$(PATH)

DEMO_START ?= 2024-01-01
DEMO_DAYS ?= 4
DEMO_USERS ?= 300
DEMO_ITEMS ?= 400

.PHONY: help install demo test lint clean airflow-init bench-pipeline

help:
	@echo "make demo   - synthesize demo logs and run the Airflow DAG for each demo date, then summarize"
	@echo "make test   - ruff + pytest (unit, data, DAG, integration on tiny data)"
	@echo "make bench-pipeline EVENTS=1000000 - time one day of ingest + dbt + GX (bench/results/pipeline_day.jsonl)"
	@echo "make clean  - remove var/ (warehouse, MLflow store, Airflow home, landing files)"

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

airflow-init: install
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	$(BIN)/airflow pools set recsys_duckdb 1 "one DuckDB writer at a time" > /dev/null

demo: airflow-init
	$(BIN)/recsys data synth --days $(DEMO_DAYS) --users $(DEMO_USERS) --items $(DEMO_ITEMS) --seed 7 --start $(DEMO_START)
	@set -e; for i in $$(seq 0 $$(( $(DEMO_DAYS) - 1 ))); do \
	  ds=$$(date -u -d "$(DEMO_START) + $$i day" +%F); \
	  echo "=== airflow dags test recsys_daily $$ds"; \
	  $(BIN)/airflow dags test recsys_daily $$ds > $(AIRFLOW_HOME)/dags-test-$$ds.log 2>&1 \
	    || { tail -40 $(AIRFLOW_HOME)/dags-test-$$ds.log; echo "DAG run for $$ds failed: see $(AIRFLOW_HOME)/dags-test-$$ds.log"; exit 1; }; \
	  grep -E "Marking run|state=" $(AIRFLOW_HOME)/dags-test-$$ds.log | tail -1 || true; \
	done
	$(BIN)/recsys summary
	@echo ""
	@echo "Warehouse:  $(RECSYS_HOME)/warehouse/recsys.duckdb   (recsys sql \"select * from marts.recommendations limit 10\")"
	@echo "MLflow UI:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(RECSYS_HOME)/mlflow/mlflow.db --port 5000  -> http://localhost:5000"
	@echo "Airflow UI: AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags $(BIN)/airflow standalone  -> http://localhost:8080"
	@echo "Logs of each DAG run: $(AIRFLOW_HOME)/dags-test-<ds>.log"

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q

EVENTS ?= 1000000
bench-pipeline: install
	$(BIN)/python bench/pipeline_day.py --events $(EVENTS)

clean:
	rm -rf var
