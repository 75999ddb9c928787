"""The DuckDB warehouse: connections, schemas and the tables Python owns.

DuckDB allows one writing process at a time, so connections are read-only unless a stage asks to
write (`connect(cfg, read_only=False)`); the Airflow DAG puts every writer in a one-slot pool.

DuckDB also refuses a read-only open from another process while a writer holds the file ("Conflicting
lock is held"), and a reader holding the file makes the next writer fail the same way. So the pipeline
serializes itself with a file lock next to the warehouse (`writer_lock`: exclusive, reentrant in a
process, released by the kernel when a process dies), and readers (`reader`) take the same lock shared
without waiting: when no writer runs they read the live file, otherwise the read snapshot (checkpoint +
copy + atomic rename) that a writer refreshes when it takes the lock and the copy is due
(`warehouse.snapshot_max_age_minutes`).
dbt owns `staging`, `intermediate` and `marts` models; Python owns `raw.*` (ingest), `features.*`
(vocabularies) and the published tables `marts.recommendations` and `marts.ranking_metrics`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from recsys.config import Config

log = logging.getLogger(__name__)

SCHEMAS = ("raw", "staging", "intermediate", "marts", "features")

# raw.* mirrors the landing contract (docs/architecture.md); `source_file`/`source_line` trace every
# row back to its landing file so a rejected or suspicious row can always be found again.
RAW_DDL = {
    "raw.behaviors": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, item_id BIGINT NOT NULL,
        behavior VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, value DOUBLE, device VARCHAR,
        source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.users": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, age INTEGER, gender VARCHAR, city VARCHAR,
        occupation VARCHAR, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.items": """
        ds DATE NOT NULL, item_id BIGINT NOT NULL, category VARCHAR, brand VARCHAR, price DOUBLE,
        title VARCHAR, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL""",
    "raw.rejected_rows": """
        ds DATE NOT NULL, entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL,
        source_line BIGINT NOT NULL, reason VARCHAR NOT NULL, record VARCHAR""",
    "raw.ingest_files": """
        ds DATE NOT NULL, entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL,
        rows_in BIGINT NOT NULL, rows_accepted BIGINT NOT NULL, rows_rejected BIGINT NOT NULL""",
}

PUBLISHED_DDL = {
    # one row per (ds, registered model): which version served ds, and why (the promotion gate)
    "marts.model_promotions": """
        ds DATE NOT NULL, registered_model VARCHAR NOT NULL, challenger_version VARCHAR NOT NULL,
        champion_before VARCHAR, champion_after VARCHAR NOT NULL, decision VARCHAR NOT NULL,
        metric VARCHAR NOT NULL, challenger_value DOUBLE, champion_value DOUBLE""",
    "marts.recommendations": """
        ds DATE NOT NULL, user_id BIGINT NOT NULL, rank INTEGER NOT NULL, item_id BIGINT NOT NULL,
        score DOUBLE NOT NULL, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
        candidate_source VARCHAR, explanation VARCHAR""",
    "marts.ranking_metrics": """
        ds DATE NOT NULL, model VARCHAR NOT NULL, k INTEGER NOT NULL, precision DOUBLE,
        recall DOUBLE, ndcg DOUBLE, hit_rate DOUBLE, mrr DOUBLE, coverage DOUBLE,
        users_evaluated BIGINT, users_without_positives BIGINT""",
}


def connect(cfg: Config, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the warehouse. Writers get the schemas and Python-owned tables created if missing.

    A read-only open of a warehouse that does not exist yet fails with a message that says which
    stage creates it, instead of DuckDB's bare IO error.
    """
    path = Path(cfg.paths.warehouse)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist yet; run `recsys ingest --ds <date>` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        ensure_tables(con)
    return con


def bound_memory(con: duckdb.DuckDBPyConnection, env_var: str, default: str = "2GB") -> None:
    """DuckDB's memory_limit for this connection from `env_var` (default `default`): beyond it work spills
    to `<warehouse>.tmp` instead of growing the process (DuckDB's own default is 80% of RAM)."""
    con.execute("SET memory_limit = ?", [os.environ.get(env_var, default)])


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create schemas and the Python-owned tables (idempotent)."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for name, columns in {**RAW_DDL, **PUBLISHED_DDL}.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")


# Earlier warehouse layouts of the training examples, each moved once to marts.training_example_lists
# (one row per positive, negatives as lists), which dbt then reads the view training_examples from. dbt
# alone would replace an old table by the view and start the new table empty, so training windows would
# silently lose every day not rebuilt. Both old layouts hold one row per example:
#   marts.training_examples (a table): the negative's number is read back from its example_id
#       ('<event_id>-n<k>');
#   marts.training_example_rows: keyed by (event_id, negative_number).
_EXAMPLE_NUMBERS = {
    "training_examples": """
        SELECT * EXCLUDE (example_id),
               CASE WHEN example_id = event_id THEN 0
                    ELSE CAST(substr(example_id, length(event_id) + 3) AS INTEGER) END AS negative_number
        FROM marts.training_examples""",
    "training_example_rows": "SELECT * FROM marts.training_example_rows",
}
_EXAMPLE_LISTS_FROM = """
    CREATE TABLE marts.training_example_lists AS
    WITH examples AS ({rows}),
    negatives AS (
        SELECT ds, event_id,
               list(item_id ORDER BY negative_number) AS negative_items,
               list(category ORDER BY negative_number) AS negative_categories,
               list(negative_sampler ORDER BY negative_number) AS negative_samplers
        FROM examples WHERE negative_number > 0
        GROUP BY ds, event_id
    )
    SELECT p.ds, p.event_id, p.user_id, p.item_id, p.category, p.event_at, p.age, p.gender, p.occupation,
           p.city, p.hour, p.weekday, p.device,
           CAST(coalesce(n.negative_items, []) AS BIGINT[]) AS negative_items,
           CAST(coalesce(n.negative_categories, []) AS VARCHAR[]) AS negative_categories,
           CAST(coalesce(n.negative_samplers, []) AS VARCHAR[]) AS negative_samplers
    FROM examples AS p
    LEFT JOIN negatives AS n ON n.ds = p.ds AND n.event_id = p.event_id
    WHERE p.negative_number = 0"""


def migrate_layout(con: duckdb.DuckDBPyConnection) -> bool:
    """Move the tables of an earlier warehouse layout to this one, each step in one transaction; True if
    any step changed something. `transform.build` runs this before dbt (whose contracts would refuse the
    old layouts). The steps:

    - the examples' layouts (above): an old examples table becomes marts.training_example_lists, and dbt
      then makes training_examples the view of it;
    - marts.user_histories without `history_spec` gets the column, null in its old rows: no later ds
      carries those rows forward, so the next ds reads every event once (models/marts/user_histories.sql).
    """
    moved = _migrate_example_layout(con)
    return _add_history_spec(con) or moved


def _add_history_spec(con: duckdb.DuckDBPyConnection) -> bool:
    """Give an older marts.user_histories its `history_spec` column (null: never carried forward)."""
    found = con.execute(
        "SELECT count(*) FILTER (WHERE column_name = 'history_spec'), count(*) FROM information_schema.columns "
        "WHERE table_schema = 'marts' AND table_name = 'user_histories'").fetchone()
    if found[1] == 0 or found[0] == 1:
        return False
    with transaction(con):
        con.execute("ALTER TABLE marts.user_histories ADD COLUMN history_spec VARCHAR")
    log.info("added marts.user_histories.history_spec (null in the rows built before it)")
    return True


def _migrate_example_layout(con: duckdb.DuckDBPyConnection) -> bool:
    """An examples table of an earlier layout becomes marts.training_example_lists (see above)."""
    kinds = dict(con.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'marts' AND "
        "table_name IN ('training_examples', 'training_example_rows', 'training_example_lists')").fetchall())
    old = [name for name in _EXAMPLE_NUMBERS if kinds.get(name) == "BASE TABLE"]
    if not old or "training_example_lists" in kinds:
        return False
    if len(old) > 1:
        raise RuntimeError(f"the warehouse holds two layouts of the training examples ({', '.join(old)}): "
                           "keep the one dbt built last and drop the other by hand")
    con.execute("SET enable_progress_bar = false")  # a log, not a terminal
    with transaction(con):
        con.execute(_EXAMPLE_LISTS_FROM.format(rows=_EXAMPLE_NUMBERS[old[0]]))
        con.execute(f"DROP TABLE marts.{old[0]}")
    log.info("moved marts.%s (one row per example) to marts.training_example_lists", old[0])
    return True


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction: everything it wrote appears at commit or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def replace_partition(con: duckdb.DuckDBPyConnection, table: str, ds: str, select_sql: str,
                      params: list | None = None) -> int:
    """Delete `table`'s rows for `ds` and insert `select_sql`'s rows, inside the caller's transaction.

    `table` must be a known constant (never user input); `ds` and `params` are bound parameters.
    Returns the number of rows inserted.
    """
    con.execute(f"DELETE FROM {table} WHERE ds = ?", [ds])
    con.execute(f"INSERT INTO {table} {select_sql}", params or [])
    return con.execute(f"SELECT count(*) FROM {table} WHERE ds = ?", [ds]).fetchall()[0][0]


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    schema, _, name = qualified.partition(".")
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(row[0][0])


# --------------------------------------------------------------------------- one writer, many readers

READER_CONFIG = {"enable_external_access": False, "lock_configuration": True}
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, list[int]] = {}  # lock path -> [fd, depth] for the lock this process holds
_GUARD = threading.Lock()


def lock_path(cfg: Config) -> Path:
    """The writer lock file: `<warehouse>.lock`, next to the warehouse."""
    wh = Path(cfg.paths.warehouse)
    return wh.with_name(wh.name + ".lock")


def snapshot_path(cfg: Config) -> Path:
    """The read snapshot: `<warehouse dir>/snapshot/<warehouse name>`."""
    wh = Path(cfg.paths.warehouse)
    return wh.parent / "snapshot" / wh.name


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _holder(fd: int) -> str:
    """What the lock file says about its last writer (pid and start time)."""
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _acquire_exclusive(path: Path) -> int:
    """Block until this process holds the exclusive lock; returns the lock file's descriptor."""
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("warehouse busy (last writer: %s; or readers); waiting for the writer lock %s",
                     _holder(fd), path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def writer_lock(cfg: Config) -> Iterator[None]:
    """Hold the warehouse's writer lock for a block: one writing process at a time, waiting if needed.

    Reentrant inside a process (`recsys run` holds it for the whole range, each stage again), and a
    thread of another process never enters while it is held. A process killed while holding it
    releases it with its file descriptors, so there is no stale lock to clean up after a crash.
    Taking it refreshes the read snapshot when that is due (`publish_snapshot`), so readers that come
    while this writer runs read the state from before it. Leaving it publishes nothing: readers read the
    live file again, and the next writer refreshes the snapshot if it is due by then.
    """
    key = str(lock_path(cfg))
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with thread_lock:
        if key not in _HELD:
            _HELD[key] = [_acquire_exclusive(Path(key)), 0]
            publish_snapshot(cfg, max_age_s=cfg.warehouse.snapshot_max_age_minutes * 60)
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                os.close(_HELD.pop(key)[0])  # closing the descriptor releases the flock


def publish_snapshot(cfg: Config, max_age_s: float = 0.0) -> Path | None:
    """Copy the warehouse to the read snapshot (temp file + atomic rename) when it is due.

    Due: there is no snapshot yet, or the warehouse changed after it was taken and it is at least
    `max_age_s` old. The copy is of the whole file, so it costs what the history weighs (10.4 GB took
    14-44 s after two days of 10M events), not what a day adds; with a max age a nightly run pays it once,
    at its first stage, instead of at every stage. Call with the writer lock held and no write in flight.
    CHECKPOINT first folds the write-ahead log into the file, so the copy of the file alone is a
    consistent database. A reader that has the old snapshot open keeps reading it (rename does not touch
    open files). Returns the snapshot path, or None when there is nothing to copy or the warehouse is
    held by a process outside the lock.
    """
    src, dst = Path(cfg.paths.warehouse), snapshot_path(cfg)
    if not src.exists():
        return None
    if dst.exists() and not _snapshot_due(src, dst, max_age_s):
        return dst
    try:
        con = duckdb.connect(str(src))
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
    except duckdb.Error as exc:
        log.warning("read snapshot not refreshed (%s): readers keep the previous one", exc)
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    started = time.perf_counter()
    how = copy_file(src, tmp)
    os.replace(tmp, dst)
    # the copy grows with the warehouse, not with the day (docs/scaling-out.md): say what it costs
    log.info("read snapshot published: %.1f MB in %.1f s (%s, %s)", dst.stat().st_size / 1e6,
             time.perf_counter() - started, how, dst)
    return dst


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), share the source's extents with the destination


def copy_file(src: Path, dst: Path) -> str:
    """Copy src to dst; returns "reflink" or "copy".

    On a copy-on-write filesystem (XFS with reflink, btrfs) the copy is a reflink: dst shares src's
    blocks until either is written, so no block is written now (not measured here: the development
    disk is ext4, where the byte copy of a 7.9 GB warehouse took 23.0 s, bench/README.md session 17).
    Elsewhere (ext4, tmpfs, across filesystems) the kernel refuses the clone and the bytes are copied
    (shutil.copyfile: sendfile).
    """
    with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
        try:
            fcntl.ioctl(fdst.fileno(), FICLONE, fsrc.fileno())
            return "reflink"
        except OSError:  # EOPNOTSUPP / EINVAL / EXDEV / ENOTTY: no clone here, copy below
            pass
    shutil.copyfile(src, dst)
    return "copy"


def _snapshot_due(src: Path, dst: Path, max_age_s: float) -> bool:
    """True when the warehouse changed after the snapshot was taken (a write-ahead log, or a newer
    file) and the snapshot is at least max_age_s old."""
    wal = src.with_name(src.name + ".wal")
    taken_ns = dst.stat().st_mtime_ns
    changed = wal.exists() or src.stat().st_mtime_ns > taken_ns
    return changed and time.time_ns() - taken_ns >= max_age_s * 1e9


@contextmanager
def reader(cfg: Config) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """A read-only connection that neither waits for nor breaks a writer: yields (connection, source).

    source is "live" (the warehouse itself: no writer runs, and the shared lock keeps one from starting
    until the block ends) or "snapshot <time>" (a writer runs: the copy it published, as of that time).
    The connection cannot write anywhere: read_only, no file system access (COPY TO, ATTACH,
    read_csv, extensions) and a locked configuration, so SQL from a user is safe to run on it.
    """
    wh = Path(cfg.paths.warehouse)
    if not wh.exists():
        raise FileNotFoundError(f"warehouse {wh} does not exist yet; run `recsys ingest --ds <date>` first")
    fd = _open_lock_file(lock_path(cfg))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            path, source = wh, "live"
        except BlockingIOError:
            path = snapshot_path(cfg)
            if not path.exists():
                raise RuntimeError(f"warehouse {wh} is being written ({_holder(fd)}) and no read snapshot has "
                                   "been published yet; retry when the stage finishes") from None
            stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            source = f"snapshot {stamp:%Y-%m-%dT%H:%M:%SZ}"
        con = duckdb.connect(str(path), read_only=True, config=READER_CONFIG)
        try:
            yield con, source
        finally:
            con.close()
    finally:
        os.close(fd)
