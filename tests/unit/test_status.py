"""`recsys status --ds D` on a small hand-made warehouse: stage evidence, rows, next step, a running writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.config import Config, load_config
from recsys.report import summary_tables
from recsys.status import DONE, FAILED, NOT_RUN, NOTHING_TO_DO, collect
from recsys.warehouse import connect

DS, PREV = "2024-01-02", "2024-01-01"


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config()
    con = connect(cfg, read_only=False)  # raw.* and the published marts
    try:
        con.execute("INSERT INTO raw.ingest_files VALUES (?, 'behaviors', 'a.parquet', 10, 9, 1), "
                    "(?, 'behaviors', 'b.parquet', 5, 5, 0)", [DS, DS])
        con.execute("CREATE TABLE marts.training_examples (ds DATE, user_id BIGINT, label INTEGER)")
        con.execute("INSERT INTO marts.training_examples VALUES (?, 1, 1), (?, 2, 0), (?, 1, 1)", [DS, DS, PREV])
        con.execute("INSERT INTO marts.recommendations VALUES (?, 1, 1, 7, 0.9, 'din', '3', 'history', NULL), "
                    "(?, 1, 2, 8, 0.8, 'din', '3', 'history', NULL)", [DS, DS])
        con.execute("INSERT INTO marts.model_promotions VALUES (?, 'recsys_ranker', '3', '2', '2', 'kept', 'gauc', "
                    "0.61, 0.63)", [DS])
    finally:
        con.close()
    return cfg


def write_gx_result(cfg: Config, suite: str, success: bool, run: str = "20240102T000000Z") -> None:
    folder = Path(cfg.paths.home) / "gx" / "uncommitted" / "validations" / suite / f"{suite}-{DS}" / run
    folder.mkdir(parents=True)
    (folder / f"recsys-{suite}.json").write_text(json.dumps({"success": success}))


def states(status) -> dict[str, str]:
    return {s.stage: s.state for s in status.stages}


def test_stages_rows_and_next_step(cfg: Config) -> None:
    write_gx_result(cfg, "raw_behaviors", True)
    status = collect(cfg, DS)
    assert status.source == "live"
    assert states(status) == {"ingest": DONE, "transform": DONE, "validate": DONE, "train": NOT_RUN,
                              "promote": DONE, "score": DONE, "evaluate": NOTHING_TO_DO}
    detail = {s.stage: s.detail for s in status.stages}
    assert detail["ingest"] == "2 files, 14 rows accepted, 1 rejected"
    assert "kept" in detail["promote"] and "v3" in detail["promote"] and "serving v2" in detail["promote"]
    assert detail["score"].startswith("2 recommendations for 1 users")
    assert status.rows["marts.training_examples"] == 2 and status.rows["raw.behaviors"] == 0
    assert status.champion is None and any("no MLflow store" in n for n in status.notes)
    assert not (Path(cfg.paths.home) / "mlflow").exists()  # status created no MLflow store
    assert status.next_step.startswith(f"run: recsys train --ds {DS}")


def test_failed_suite_and_empty_day(cfg: Config) -> None:
    write_gx_result(cfg, "raw_behaviors", True)
    write_gx_result(cfg, "training_examples", True, run="20240102T000000Z")
    write_gx_result(cfg, "training_examples", False, run="20240102T010000Z")  # the newest run counts
    status = collect(cfg, DS)
    validate = next(s for s in status.stages if s.stage == "validate")
    assert validate.state == FAILED and "training_examples" in validate.detail
    assert "raw_behaviors" not in validate.detail
    empty = collect(cfg, "2024-01-09")
    assert all(s.state != DONE for s in empty.stages)
    assert empty.next_step.startswith("run: recsys ingest --ds 2024-01-09")
    assert any("no rows for ds=2024-01-09" in n for n in empty.notes)


def test_bad_ds_and_missing_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: Config) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        collect(cfg, "2024-1-2")
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="recsys ingest"):
        collect(load_config(), DS)


WRITER = """
import sys, time
from recsys.config import load_config
from recsys.warehouse import connect, writer_lock
cfg = load_config()
with writer_lock(cfg):
    con = connect(cfg, read_only=False)  # holds DuckDB's file lock, as a running stage does
    print("holding", flush=True)
    time.sleep(60)
"""


def test_works_while_a_writer_holds_the_warehouse(cfg: Config) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "RECSYS_HOME": str(cfg.paths.home)})
    try:
        deadline = time.monotonic() + 120
        while proc.stdout.readline().strip() != "holding":
            assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
        status = collect(cfg, DS, with_mlflow=False)
        assert status.source.startswith("snapshot")
        assert states(status)["ingest"] == DONE and status.rows["marts.recommendations"] == 2
        assert any("a pipeline stage is writing" in n for n in status.notes)
        counts, _ = summary_tables(cfg)  # `recsys summary` reads the snapshot too
        assert ("marts.recommendations", 2, 1) in counts
    finally:
        proc.kill()
        proc.wait()
