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

.PHONY: help install demo test lint clean airflow-init bench-pipeline bench-scoring bench-models ui backfill stop docs

help:
	@echo "make demo   - synthesize demo logs and run the Airflow DAG for each demo date, then summarize"
	@echo "make test   - ruff + pytest (unit, data, DAG, integration on tiny data)"
	@echo "make bench-pipeline EVENTS=1000000 [DAYS=2] - time the last of DAYS days of ingest + dbt + GX (bench/results/pipeline_day.jsonl)"
	@echo "make bench-scoring      - scoring pairs/s, C=200, 2 threads, batched vs per pair (bench/results/scoring.jsonl)"
	@echo "make bench-models [PEERS=1] - Base/DIN/DIEN/DSIN on the peer protocol (+ the peer libraries) (bench/results/models.jsonl)"
	@echo "make clean  - remove var/ (warehouse, MLflow store, Airflow home, landing files)"
	@echo "make ui     - start Airflow (api-server, scheduler, dag-processor) and the MLflow UI; prints URLs + login"
	@echo "make backfill START=2024-01-01 END=2024-01-04 - backfill through the scheduler, wait, report run states"
	@echo "make stop   - stop what ui/backfill started (by process group)"
	@echo "make docs   - regenerate docs/cli.md and docs/configuration.md"

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# pip byte-compiles all ~19k installed modules on one core: 1 min 45 s of a 3 min 3 s install here.
	@# compileall does the same on every core (57 s); || true: a few packages ship files that do not
	@# compile under 3.11 (templates, old examples), which pip skips silently too.
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
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
	@echo "Airflow UI and MLflow UI: make ui   (prints the URLs and the admin login; make stop ends them)"
	@echo "Logs of each DAG run: $(AIRFLOW_HOME)/dags-test-<ds>.log"

lint: install
	$(BIN)/ruff check .

TEST_WORKERS ?= 2
test: install lint
	@# the repository's own modules, compiled once: every stage, Airflow task and CLI call of the suite is a
	@# new process, and where PYTHONDONTWRITEBYTECODE is set (it is on our machines) each would compile them again
	@$(BIN)/python -m compileall -q recsys dags ops tests bench > /dev/null
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15   # the 15 slowest: docs/testing.md

EVENTS ?= 1000000
DAYS ?= 2
bench-pipeline: install
	$(BIN)/python bench/pipeline_day.py --events $(EVENTS) --days $(DAYS)

bench-scoring: install
	$(BIN)/python bench/scoring.py --candidates 200 --threads 2

# Our models on ../shared/bench/peers' protocol; PEERS=1 runs the peer libraries in the same run (their venvs
# under PEERS_VENVS, built by ../shared/bench/peers/setup_venvs.sh; missing ones are skipped with a message).
PEERS ?= 0
bench-models: install
	$(BIN)/python bench/models.py $(if $(filter 1,$(PEERS)),--peers,) $(BENCH_MODELS_ARGS)

# Services run in their own process groups; pid files and logs in $(RECSYS_HOME)/run/ (ops/airflow_ops.py).
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000
REPROCESS ?= failed
export AIRFLOW_PORT MLFLOW_PORT

ui: install
	$(BIN)/python ops/airflow_ops.py ui

backfill: install
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD [REPROCESS=failed|completed|none]"; exit 2; }
	$(BIN)/python ops/airflow_ops.py backfill --start $(START) --end $(END) --reprocess $(REPROCESS)

stop:
	@test -x $(BIN)/python || { echo "nothing to stop (no .venv)"; exit 0; }
	$(BIN)/python ops/airflow_ops.py stop

docs: install
	$(BIN)/python ops/gen_cli_docs.py
	$(BIN)/python ops/gen_config_docs.py

clean:
	rm -rf var
