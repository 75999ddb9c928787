"""Two `recsys run` for different dates started at once run one after the other (the writer lock), neither
fails on DuckDB's file lock, and readers (`recsys sql`, and `recsys status` when it exists) keep working
while a writer runs, reading the snapshot a writer took when it started."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.ingest import partition_dir
from recsys.pipeline import run_stage
from recsys.warehouse import reader, writer_lock
from tests.reliability.conftest import Reference, model_versions
from tests.reliability.helpers import DAY1, DAY2, Proc, config_for, digest, restore, set_args

pytestmark = pytest.mark.integration
STAGE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO recsys\.pipeline: stage (\w+) ds=(\S+)")


def stage_times(output: str) -> list[datetime]:
    return [datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in map(STAGE_LINE.match, output.splitlines()) if m]


def test_two_runs_at_once_are_serialized_and_readers_keep_working(reference: Reference) -> None:
    restore(reference.after_day2, reference.home)
    cfg, home = reference.cfg, reference.home
    runner, env = CliRunner(), {"RECSYS_HOME": str(home)}
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    # a reader sees a whole state: live, or the snapshot a writer took when it started (at most
    # warehouse.snapshot_max_age_minutes old, so possibly from before day 2 was ingested), never a half ingest
    whole_states = {reference.day1["raw.behaviors"][0], reference.day2["raw.behaviors"][0]}
    runs = [Proc(["run", "--start", day, "--end", day, *set_args()], home) for day in (DAY1, DAY2)]
    sources, failures = [], []
    while any(p.popen.poll() is None for p in runs):
        with reader(cfg) as (con, source):
            sources.append(source)
            if con.execute("SELECT count(*) FROM raw.behaviors").fetchone()[0] not in whole_states:
                failures.append(f"{source} showed another raw.behaviors")
        result = runner.invoke(app, ["sql", "SELECT count(*) FROM marts.recommendations"], env=env)
        if result.exit_code != 0:
            failures.append(result.output)
        if "status" in commands:
            status = runner.invoke(app, ["status", "--ds", DAY2, "--no-mlflow"], env=env)
            if status.exit_code != 0:
                failures.append(status.output)
        time.sleep(1.0)  # each poll costs CPU the two runs need: at 0.2 s the test took 96 s, at 1 s 64 s
    codes = [p.finish() for p in runs]
    outputs = [p.output for p in runs]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert not any("Conflicting lock" in o or "Could not set lock" in o for o in outputs)
    assert failures == []
    assert any(s.startswith("snapshot") for s in sources), sources  # read while a writer held the lock
    # serialized: every stage of one run happened before every stage of the other
    first, second = sorted((stage_times(o) for o in outputs), key=min)
    assert len(first) == len(second) == 7 and max(first) <= min(second)
    assert any("waiting for the writer lock" in o for o in outputs)  # readers may make both wait a moment
    lineage = [line for o in outputs for line in o.splitlines() if "recsys.train" in line or "recsys.promote" in line]
    assert digest(cfg.paths.warehouse) == reference.day2, lineage  # both reruns were no-ops, in any order
    assert model_versions(cfg) == reference.versions_day2  # each rerun reused the model of its inputs


def test_a_writer_waits_for_the_lock_and_a_reader_reads_the_snapshot(tmp_path: Path) -> None:
    """Cheap and deterministic: this process holds the lock (as a running stage would)."""
    cfg = config_for(tmp_path)
    folder = partition_dir(cfg.paths.landing, "behaviors", DAY1)
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("user_id,item_id,behavior,ts\n" + "".join(
        f"{u},{u},view,{DAY1}T0{u}:00:00\n" for u in range(1, 8)))
    run_stage("ingest", DAY1, cfg)
    with writer_lock(cfg), writer_lock(cfg):  # reentrant: `recsys run` holds it, then each stage again
        sql = Proc(["sql", "SELECT count(*) AS n FROM raw.behaviors"], tmp_path)
        assert sql.finish(120) == 0, sql.output
        assert "read from the snapshot" in sql.output and "7" in sql.output
        writer = Proc(["ingest", "--ds", DAY1], tmp_path)
        assert writer.wait_for("waiting for the writer lock"), writer.output
        time.sleep(0.5)
        assert writer.popen.poll() is None  # still waiting, not failed
    assert writer.finish(120) == 0, writer.output
    with reader(cfg) as (con, source):  # a live reader holds the lock shared: a writer waits for it
        writer = Proc(["ingest", "--ds", DAY1], tmp_path)
        assert writer.wait_for("waiting for the writer lock"), writer.output
        assert source == "live" and con.execute("SELECT count(*) FROM raw.behaviors").fetchone()[0] == 7
    assert writer.finish(120) == 0, writer.output
    assert "Conflicting lock" not in writer.output
