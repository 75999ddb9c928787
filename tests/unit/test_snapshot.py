"""When writers refresh the read snapshot (`recsys.warehouse.publish_snapshot`): a copy of the whole file, so
a nightly run pays it once, at the first stage that finds it due, not at every stage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pytest

from recsys.config import Config, load_config
from recsys.warehouse import connect, reader, snapshot_path, writer_lock


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    cfg = load_config(overrides={"warehouse.snapshot_max_age_minutes": 60})
    write(cfg, 1)
    return cfg


def write(cfg: Config, value: int) -> None:
    """A stage's write, without the lock (the lock is what the tests take around it)."""
    con = connect(cfg, read_only=False)
    try:
        con.execute("CREATE OR REPLACE TABLE main.marker AS SELECT ? AS value", [value])
    finally:
        con.close()


def in_snapshot(cfg: Config) -> int:
    con = duckdb.connect(str(snapshot_path(cfg)), read_only=True)
    try:
        return con.execute("SELECT value FROM main.marker").fetchone()[0]
    finally:
        con.close()


def age_snapshot(cfg: Config, minutes: float, written_after: bool) -> None:
    """Pretend the snapshot was taken `minutes` ago, and the warehouse last written a minute after or
    before that (changes are told by the files' modification times)."""
    taken = time.time() - minutes * 60
    written = taken + (60 if written_after else -60)
    os.utime(snapshot_path(cfg), (taken, taken))
    os.utime(cfg.paths.warehouse, (written, written))


def test_a_writer_publishes_the_state_from_before_it_and_leaving_publishes_nothing(cfg: Config) -> None:
    assert not snapshot_path(cfg).exists()
    with writer_lock(cfg):
        assert in_snapshot(cfg) == 1  # no snapshot yet: taking the lock published the state before it
        write(cfg, 2)
        with reader(cfg) as (con, source):  # a reader while the writer runs: the state from before it
            assert source.startswith("snapshot")
            assert con.execute("SELECT value FROM main.marker").fetchone()[0] == 1
    assert in_snapshot(cfg) == 1  # leaving the lock copied nothing ...
    with reader(cfg) as (con, source):  # ... readers read the live file again
        assert source == "live" and con.execute("SELECT value FROM main.marker").fetchone()[0] == 2


def test_the_next_writer_refreshes_it_only_when_it_is_due(cfg: Config) -> None:
    with writer_lock(cfg):
        write(cfg, 2)
    with writer_lock(cfg):  # changed, but the snapshot is younger than the max age: kept
        assert in_snapshot(cfg) == 1
        write(cfg, 3)
    age_snapshot(cfg, 62, written_after=True)
    mtime = snapshot_path(cfg).stat().st_mtime_ns
    with writer_lock(cfg):  # changed and older than the max age: refreshed
        assert in_snapshot(cfg) == 3 and snapshot_path(cfg).stat().st_mtime_ns > mtime
    age_snapshot(cfg, 600, written_after=False)
    mtime = snapshot_path(cfg).stat().st_mtime_ns
    with writer_lock(cfg):  # old, but nothing changed since: no copy
        assert snapshot_path(cfg).stat().st_mtime_ns == mtime


def test_max_age_zero_refreshes_at_every_writer_after_a_change(cfg: Config) -> None:
    cfg = cfg.with_overrides({"warehouse.snapshot_max_age_minutes": 0})
    for value in (2, 3):
        with writer_lock(cfg):
            write(cfg, value)
        with writer_lock(cfg):
            assert in_snapshot(cfg) == value


def test_a_negative_max_age_is_refused(cfg: Config) -> None:
    with pytest.raises(ValueError, match="snapshot_max_age_minutes"):
        load_config(overrides={"warehouse.snapshot_max_age_minutes": -1})


def test_copy_file_clones_where_the_filesystem_can_and_copies_elsewhere(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from recsys import warehouse

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    how = warehouse.copy_file(src, tmp_path / "a.bin")  # ext4 here: "copy"; XFS (reflink) / btrfs: "reflink"
    assert how in ("reflink", "copy") and (tmp_path / "a.bin").read_bytes() == src.read_bytes()

    def refuse(*_args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(warehouse.fcntl, "ioctl", refuse)
    (tmp_path / "b.bin").write_bytes(b"stale bytes of an older snapshot")
    assert warehouse.copy_file(src, tmp_path / "b.bin") == "copy"
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
