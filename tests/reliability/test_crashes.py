"""SIGKILL during ingest, dbt build, training and scoring; every stage rerun; nothing lost.

Starting from the reference state after DAY1, DAY2 runs stage by stage. The stages under test run as
`recsys <stage>` subprocesses that are killed at points observed from their own output (a log line, a
dbt progress line, or a growing delay after the stage started), then the same ds is rerun in this
process, stage by stage. At the end every table must equal the uninterrupted
reference run, and a reader must never have seen DAY2's recommendations half-written.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from recsys.config import Config
from recsys.pipeline import run_stage
from recsys.warehouse import reader
from tests.reliability.conftest import Reference, model_versions
from tests.reliability.helpers import DAY2, Digest, Proc, digest, restore, rows, set_args

pytestmark = pytest.mark.integration

PYTHON_OWNED = ("raw.", "features.", "marts.recommendations", "marts.ranking_metrics", "marts.model_promotions")
LEDGER = {"kills": 0, "crashes_survived": 0, "reruns": 0}


def dbt_tables(d: Digest) -> Digest:
    return {t: v for t, v in d.items() if not t.startswith(PYTHON_OWNED)}


def raw_tables(d: Digest) -> Digest:
    return {t: v for t, v in d.items() if t.startswith("raw.")}


def stage_proc(stage: str, home: Path) -> Proc:
    return Proc([stage, "--ds", DAY2, *set_args()], home)


def kill_at(proc: Proc, marker: str, delay: float = 0.0) -> bool:
    """Wait for `marker`, then `delay` seconds, then SIGKILL; True when it really died mid-stage."""
    assert proc.wait_for(marker), f"never printed {marker!r}:\n{proc.output[-3000:]}"
    time.sleep(delay)
    crashed = proc.kill()
    LEDGER["kills"] += 1
    if not crashed:
        assert proc.popen.returncode == 0, proc.output[-3000:]
    assert "Conflicting lock" not in proc.output
    return crashed


def rerun(cfg: Config, stage: str) -> None:
    """Rerun a stage after the crash. Running it once more would change no table: test_concurrency.py
    reruns whole days on a finished state and asserts exactly that, so it is not repeated here."""
    run_stage(stage, DAY2, cfg)
    LEDGER["reruns"] += 1


def landing_rows(cfg: Config, entity: str) -> int:
    folder = Path(cfg.paths.landing) / entity / f"ds={DAY2}"
    return sum(pads.dataset(p, format=p.suffix.lstrip(".")).count_rows() for p in folder.glob("*.parquet"))


class RecommendationWatcher(threading.Thread):
    """Reads DAY2's recommendation count through `reader` (live or snapshot) until stopped."""

    def __init__(self, cfg: Config):
        super().__init__(daemon=True)
        self.cfg, self.seen, self.errors, self.stop = cfg, set(), [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with reader(self.cfg) as (con, _):
                    self.seen.add(con.execute("SELECT count(*) FROM marts.recommendations WHERE ds = ?",
                                              [DAY2]).fetchone()[0])
            except Exception as exc:  # noqa: BLE001 - every failure of a reader is a finding
                self.errors.append(repr(exc))
            time.sleep(0.05)


def test_kills_at_every_stage_then_rerun_equals_uninterrupted_run(reference: Reference,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    restore(reference.after_day1, reference.home)
    cfg, home, expected = reference.cfg, reference.home, reference.day2
    before = digest(cfg.paths.warehouse)

    # ---- ingest: kill after growing delays from the stage's start until one run completes by itself
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):
        crashed = kill_at(stage_proc("ingest", home), "stage ingest ds=", delay)
        LEDGER["crashes_survived"] += crashed
        now = digest(cfg.paths.warehouse)
        assert raw_tables(now) in (raw_tables(before), raw_tables(expected)), "ingest left a partial partition"
        assert {t: v for t, v in now.items() if not t.startswith("raw.")} == \
               {t: v for t, v in before.items() if not t.startswith("raw.")}
        if not crashed:
            break
    rerun(cfg, "ingest")
    assert raw_tables(digest(cfg.paths.warehouse)) == raw_tables(expected)
    accepted, rejected = rows(cfg.paths.warehouse, "SELECT (SELECT count(*) FROM raw.behaviors WHERE ds = $1), "
                              "(SELECT count(*) FROM raw.rejected_rows WHERE ds = $1 AND entity = 'behaviors')",
                              [DAY2])[0]
    assert accepted + rejected == landing_rows(cfg, "behaviors")  # rows lost: 0

    # ---- dbt build: kill after the first view, then after the first incremental model was created
    for marker in ("OK created sql view model", "OK created sql incremental model"):
        LEDGER["crashes_survived"] += kill_at(stage_proc("transform", home), marker)
        assert raw_tables(digest(cfg.paths.warehouse)) == raw_tables(expected)
    rerun(cfg, "transform")
    assert dbt_tables(digest(cfg.paths.warehouse)) == dbt_tables(expected)
    rerun(cfg, "validate")

    # ---- training: kill once epoch 1 is checkpointed; the rerun resumes instead of starting over
    LEDGER["crashes_survived"] += kill_at(stage_proc("train", home), "epoch 1:")
    with caplog.at_level(logging.INFO, logger="recsys.train"):
        rerun(cfg, "train")
    assert "resuming after epoch 1" in caplog.text
    assert model_versions(cfg) == reference.versions_day2  # no extra version from the crashed run
    rerun(cfg, "promote")

    # ---- scoring: kill at growing delays; a reader polling all along sees none or all of DAY2
    full = expected["marts.recommendations"]
    watcher = RecommendationWatcher(cfg)
    watcher.start()
    try:
        for delay in (0.5, 1.5, 3.0, 6.0, 12.0):
            crashed = kill_at(stage_proc("score", home), "stage score ds=", delay)
            LEDGER["crashes_survived"] += crashed
            n = rows(cfg.paths.warehouse, "SELECT count(*) FROM marts.recommendations WHERE ds = ?", [DAY2])[0][0]
            assert n == 0 or digest(cfg.paths.warehouse, ["marts.recommendations"])["marts.recommendations"] == full
            if not crashed:
                break
    finally:
        watcher.stop.set()
        watcher.join(10)
    assert watcher.errors == []
    day2_full = rows(reference.after_day2 / "warehouse" / "recsys.duckdb",
                     "SELECT count(*) FROM marts.recommendations WHERE ds = ?", [DAY2])[0][0]
    assert watcher.seen <= {0, day2_full}, watcher.seen
    rerun(cfg, "score")
    rerun(cfg, "evaluate")

    assert digest(cfg.paths.warehouse) == expected  # every table, as if nothing had happened
    print(f"\nreliability ledger: {LEDGER}")


def test_a_changed_user_snapshot_applies_from_its_day_on(reference: Reference) -> None:
    """Day 2's snapshot contradicts day 1's about one user: day 1 keeps the old attributes, day 2 the new."""
    from tests.reliability.conftest import CHANGED_USER

    got = rows(reference.after_day2 / "warehouse" / "recsys.duckdb",
               "SELECT ds::VARCHAR, age, gender, city FROM marts.user_features WHERE user_id = ? ORDER BY ds",
               [CHANGED_USER])
    assert len(got) == 2 and got[1] == (DAY2, 99, "X", "Atlantis") and got[0][1:] != (99, "X", "Atlantis")
