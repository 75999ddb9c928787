"""Shared tools of the reliability suite: table digests, a reference pipeline, and stage subprocesses.

Everything runs on tiny synthetic data (recsys.data.synth) so the whole suite stays quick.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb

from recsys.config import Config, TrainConfig, load_config
from recsys.warehouse import READER_CONFIG

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "recsys"
RECSYS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from recsys.cli import app; app()"]
DAY1, DAY2 = "2024-01-01", "2024-01-02"

Digest = dict[str, tuple[int, str]]


def overrides() -> dict[str, object]:
    """Small, fast settings; two epochs so a crash after epoch 1 can resume from its checkpoint."""
    values: dict[str, object] = {"train.epochs": 2, "train.batch_size": 128, "score.top_k": 10,
                                 "ingest.max_reject_rate": 0.5}
    if "models" in {f.name for f in dataclasses.fields(TrainConfig)}:
        values["train.models"] = ["din"]  # one model per day keeps the suite quick
    return values


def set_args() -> list[str]:
    """The same overrides as `--set` options of the CLI."""
    import json

    out = []
    for key, value in overrides().items():
        out += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return out


def config_for(home: Path, extra: dict[str, object] | None = None) -> Config:
    """The suite's config with every path under `home` (the environment is left as it was)."""
    before = os.environ.get("RECSYS_HOME")
    os.environ["RECSYS_HOME"] = str(home)
    try:
        return load_config(overrides={**overrides(), **(extra or {})})
    finally:
        os.environ["RECSYS_HOME"] = before if before is not None else ""
        if before is None:
            del os.environ["RECSYS_HOME"]


def tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                       "WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def digest(warehouse: Path, only: Iterable[str] | None = None) -> Digest:
    """Row count and an order-independent content hash of every table (or of `only`)."""
    con = duckdb.connect(str(warehouse), read_only=True, config=READER_CONFIG)
    try:
        out = {}
        for t in only or tables(con):
            rows = con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            out[t] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return out
    finally:
        con.close()


def rows(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True, config=READER_CONFIG)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def restore(saved: Path, home: Path) -> None:
    """Put a saved copy of a whole home back at the same path (MLflow stores absolute artifact paths)."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(saved, home, symlinks=True)
    _forget_mlflow_connections()


def _forget_mlflow_connections() -> None:
    """MLflow keeps one SQLAlchemy engine per store URI for the life of the process; its pooled SQLite
    connections would keep reading the replaced (deleted) mlflow.db. Drop them so the copy is read."""
    for name in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store = getattr(sys.modules.get(name), "SqlAlchemyStore", None)
        engines = getattr(store, "_engine_map", None)
        if isinstance(engines, dict):
            for engine in engines.values():
                engine.dispose()
            engines.clear()
    # the store objects are cached per URI too (lru_cache on the registries): build new ones on next use
    for name, registry in (("mlflow.tracking._tracking_service.registry", "TrackingStoreRegistry"),
                           ("mlflow.tracking._model_registry.registry", "ModelRegistryStoreRegistry")):
        cached = getattr(getattr(sys.modules.get(name), registry, None), "_get_store_with_resolved_uri", None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def synth_landing(cfg: Config) -> None:
    from recsys.data.synth import synthesize

    synthesize(Path(cfg.paths.landing), days=2, users=40, items=80, seed=11, start=date(2024, 1, 1))


def add_contradicting_snapshot(cfg: Config, user_id: int) -> None:
    """Day 2's user snapshot says something else about a user than day 1's (a legitimate change)."""
    folder = Path(cfg.paths.landing) / "users" / f"ds={DAY2}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-changes.csv").write_text(f"user_id,age,gender,city,occupation\n{user_id},99,X,Atlantis,pilot\n")


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ, RECSYS_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("RECSYS_CONFIG", None)
    return env


class Proc:
    """A `recsys` subprocess whose output lines are collected as they come (stdout and stderr merged)."""

    def __init__(self, args: list[str], home: Path):
        self.lines: list[str] = []
        self.popen = subprocess.Popen([*RECSYS, *args], cwd=REPO, env=env_for(home), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, marker: str, timeout: float = 120) -> bool:
        """True once a line containing `marker` was printed; False if the process ended first."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                if marker in self.lines[seen]:
                    return True
                seen += 1
            if self.popen.poll() is not None and seen >= len(self.lines):
                self._reader.join(5)
                if seen >= len(self.lines):
                    return False
            time.sleep(0.01)
        raise TimeoutError(f"no line with {marker!r} within {timeout}s:\n{self.output[-3000:]}")

    def kill(self) -> bool:
        """SIGKILL; True when the process was still running (a real crash), False if it had finished."""
        running = self.popen.poll() is None
        if running:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(60)
        self._reader.join(10)
        return running

    def finish(self, timeout: float = 300) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(10)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)
