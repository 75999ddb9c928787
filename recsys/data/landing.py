"""Write landing partitions (`<landing>/<entity>/ds=YYYY-MM-DD/<name>.<fmt>`) atomically.

Every writer goes through a temp file in the target folder whose name starts with "." (ingest ignores
hidden files), then `os.replace`: a reader sees the old file or the new one, never half a file. A write
replaces the whole partition, so rerunning a generator or an importer never leaves stale files behind.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("parquet", "csv", "jsonl")
ENTITIES = ("behaviors", "users", "items")


def partition_dir(landing: Path, entity: str, ds: date | str) -> Path:
    """The folder of one entity and ds: `<landing>/<entity>/ds=YYYY-MM-DD`."""
    if entity not in ENTITIES:
        raise ValueError(f"unknown landing entity {entity!r}; expected one of {ENTITIES}")
    ds_text = ds.isoformat() if isinstance(ds, date) else date.fromisoformat(ds).isoformat()
    return Path(landing) / entity / f"ds={ds_text}"


def temp_path(final: Path) -> Path:
    """A hidden sibling of `final` (same folder, so `os.replace` is atomic on the same file system)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def clear_partition(folder: Path, keep: Path | None = None) -> None:
    """Remove every regular file of a partition folder except `keep` (older parts, stale temp files)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and path != keep:
            path.unlink()


def write_partition(landing: Path, entity: str, ds: date | str, table: pa.Table, fmt: str = "parquet",
                    name: str = "part-000") -> Path:
    """Write `table` as the only file of one ds partition of `entity`; returns the file written.

    Parquet keeps the Arrow types (timestamps as `timestamp[us]` without time zone, values in UTC);
    CSV gets a header row and empty cells for nulls; JSONL one object per line with null for nulls.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown landing format {fmt!r}; expected one of {FORMATS}")
    folder = partition_dir(landing, entity, ds)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{name}.{fmt}"
    tmp = temp_path(final)
    try:
        _WRITERS[fmt](table, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    clear_partition(folder, keep=final)
    return final


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def _write_csv(table: pa.Table, path: Path) -> None:
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="needed"))


def _write_jsonl(table: pa.Table, path: Path) -> None:
    # DuckDB writes newline-delimited JSON natively (nulls as null, timestamps as ISO text), vectorised.
    con = duckdb.connect()
    try:
        con.register("landing_table", table)
        con.execute(f"COPY landing_table TO '{_sql_path(path)}' (FORMAT json)")
    finally:
        con.close()


def _sql_path(path: Path) -> str:
    """A file path as a SQL string literal body (COPY takes no bound parameter for its target)."""
    return str(path).replace("'", "''")


_WRITERS = {"parquet": _write_parquet, "csv": _write_csv, "jsonl": _write_jsonl}


class PartitionStream:
    """Append Arrow batches to Parquet partitions of one entity, one file per ds, committed together.

    For inputs too large to hold in memory (Taobao's 100M rows arrive sorted by user, so every chunk
    holds every day): each ds gets one open `ParquetWriter` on a temp file; `commit()` closes them and
    moves every file into place, replacing the partition; `abort()` removes the temp files.
    """

    def __init__(self, landing: Path, entity: str, schema: pa.Schema, name: str = "part-000") -> None:
        self.landing, self.entity, self.schema, self.name = Path(landing), entity, schema, name
        self._writers: dict[str, tuple[pq.ParquetWriter, Path, Path]] = {}
        self.rows: dict[str, int] = {}

    def write(self, ds: str, table: pa.Table) -> None:
        """Append `table` (rows of one ds, columns of `schema`) to the partition of `ds`."""
        if ds not in self._writers:
            folder = partition_dir(self.landing, self.entity, ds)
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{self.name}.parquet"
            tmp = temp_path(final)
            self._writers[ds] = (pq.ParquetWriter(tmp, self.schema, compression="zstd"), tmp, final)
            self.rows[ds] = 0
        self._writers[ds][0].write_table(table.select(self.schema.names).cast(self.schema))
        self.rows[ds] += table.num_rows

    def commit(self) -> list[str]:
        """Close every writer and move its file into place; returns the ds written, sorted."""
        for writer, tmp, final in self._writers.values():
            writer.close()
            os.replace(tmp, final)
            clear_partition(final.parent, keep=final)
        days = sorted(self._writers)
        self._writers = {}
        return days

    def abort(self) -> None:
        """Drop every uncommitted temp file (the partitions keep their previous contents)."""
        for writer, tmp, _ in self._writers.values():
            writer.close()
            tmp.unlink(missing_ok=True)
        self._writers = {}
