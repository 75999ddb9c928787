"""Stage 1: load one day of landing files into DuckDB `raw.*`, quarantining bad rows.

Every landing file is read into an Arrow table of *strings* plus its physical line number, so the
typing and business rules run once, in SQL, for every format alike. Each input row ends up either in
`raw.<entity>` or in `raw.rejected_rows` with its file, line and the rule it broke: accepted +
rejected = input, checked before commit. The whole ds is replaced in one transaction, so a failure
(missing partition, unreadable file, too many rejects) leaves the previous contents untouched.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.config import Config
from recsys.warehouse import bound_memory, connect, replace_partition, transaction

log = logging.getLogger(__name__)

FORMATS = (".parquet", ".csv", ".jsonl")

# Landing columns per entity: (name, required). Order is the order of the raw table (after ds).
COLUMNS: dict[str, list[tuple[str, bool]]] = {
    "behaviors": [("user_id", True), ("item_id", True), ("behavior", True), ("ts", True),
                  ("value", False), ("device", False)],
    "users": [("user_id", True), ("age", False), ("gender", False), ("city", False),
              ("occupation", False)],
    "items": [("item_id", True), ("category", False), ("brand", False), ("price", False),
              ("title", False)],
}
ID_COLUMN = {"behaviors": None, "users": "user_id", "items": "item_id"}


class IngestError(RuntimeError):
    """A ds cannot be ingested; the message names the file and the rule."""


@dataclass
class EntityCounts:
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestResult:
    ds: str
    counts: dict[str, EntityCounts]

    @property
    def rows_in(self) -> int:
        return sum(c.rows_in for c in self.counts.values())


def validate_ds(ds: str) -> str:
    """Return ds if it is an ISO date (YYYY-MM-DD); raise ValueError otherwise (no SQL ever sees junk)."""
    try:
        return date.fromisoformat(ds).isoformat() if len(ds) == 10 else _bad_ds(ds)
    except (TypeError, ValueError):
        return _bad_ds(ds)


def _bad_ds(ds: object) -> str:
    raise ValueError(f"ds must be a date written YYYY-MM-DD, got {ds!r}")


def partition_dir(landing: Path, entity: str, ds: str) -> Path:
    return Path(landing) / entity / f"ds={ds}"


def landing_files(landing: Path, entity: str, ds: str) -> list[Path]:
    """The landing files of one entity and ds, sorted by name (hidden and temp files ignored)."""
    folder = partition_dir(landing, entity, ds)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in FORMATS and not p.name.startswith((".", "_")))


# --------------------------------------------------------------------------------------------------
# Reading: any format -> Arrow table of string columns + _line + _error (a row-level parse error)
# --------------------------------------------------------------------------------------------------

def _string_table(columns: dict[str, pa.Array], lines: pa.Array, errors: pa.Array,
                  raw: pa.Array | None = None) -> pa.Table:
    """The common shape of every file read: landing columns as strings, `_line` (physical line or
    Parquet row, 1-based), `_error` (a parse error of that row) and `_raw` (its text when unparsable)."""
    raw = raw if raw is not None else pa.nulls(len(lines), pa.string())
    return pa.table({**columns, "_line": lines, "_error": errors, "_raw": raw})


def _decode(arr: pa.Array) -> tuple[pa.Array, list[int]]:
    """Binary -> UTF-8 strings; rows with invalid bytes are reported by index.

    Their text is kept with U+FFFD in place of the bad bytes: the row is rejected anyway (the caller
    sets its error), and the rejected record then still shows what the file held.
    """
    try:
        return pc.cast(arr, pa.string()), []
    except pa.ArrowInvalid:
        # rare path: find the offending rows one by one so the good ones are kept
        values, bad = [], []
        for i, raw in enumerate(arr.to_pylist()):
            try:
                values.append(None if raw is None else raw.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(raw.decode("utf-8", errors="replace"))
                bad.append(i)
        return pa.array(values, pa.string()), bad


def _read_csv(path: Path, entity: str) -> pa.Table:
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        return _empty(entity)
    header = [h.strip() for h in header]
    missing = [c for c, req in COLUMNS[entity] if req and c not in header]
    if missing:
        raise IngestError(f"{path}: missing required column(s) {missing} (rule: required_columns; "
                          f"header is {header})")
    malformed: list[tuple[int, str, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        malformed.append((row.number, row.text,
                          f"malformed_row (expected {row.expected_columns} fields, got {row.actual_columns})"))
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, column_names=header, skip_rows=1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in header}),
    )
    # pyarrow numbers records from 1 counting the header; the good rows are the records it did not
    # report as malformed, in order (ignore_empty_lines=False keeps this exact). A record is one
    # physical line unless a quoted value holds a line break: then map records to their first line.
    total = table.num_rows + len(malformed)
    bad_records = {m[0] for m in malformed}
    good = [n for n in range(2, total + 2) if n not in bad_records]
    first_line = _record_lines(path, total + 1)
    if first_line is not None:
        good = [first_line[n - 1] for n in good]
        malformed = [(first_line[n - 1], text, reason) for n, text, reason in malformed]
    return _assemble(entity, table, good, malformed)


def _physical_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _record_lines(path: Path, records: int) -> list[int] | None:
    """First physical line (1-based) of each CSV record, header included; None when every record is
    one line (the common case, decided by counting line breaks, without parsing)."""
    if _physical_lines(path) == records:
        return None
    starts, end = [], 0
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        for _ in reader:
            starts.append(end + 1)
            end = reader.line_num
    if len(starts) != records:  # the two parsers disagree (odd quoting): keep record numbers
        log.warning("%s: cannot map CSV records to lines; rejects name record numbers", path)
        return None
    return starts


def _assemble(entity: str, table: pa.Table, good_lines: list[int],
              malformed: list[tuple[int, str, str]]) -> pa.Table:
    """Good rows (decoded) followed by malformed rows carrying their raw text and reason."""
    errors: list[str | None] = [None] * table.num_rows
    columns: dict[str, pa.Array] = {}
    for name, _ in COLUMNS[entity]:
        if name in table.column_names:
            values, bad = _decode(table.column(name).combine_chunks())
            for i in bad:
                errors[i] = f"invalid_utf8 (column {name})"
            columns[name] = values
        else:
            columns[name] = pa.nulls(table.num_rows, pa.string())
    good = _string_table(columns, pa.array(good_lines, pa.int64()), pa.array(errors, pa.string()))
    if not malformed:
        return good
    bad_cols = {name: pa.nulls(len(malformed), pa.string()) for name, _ in COLUMNS[entity]}
    bad = _string_table(bad_cols, pa.array([m[0] for m in malformed], pa.int64()),
                        pa.array([m[2] for m in malformed], pa.string()),
                        pa.array([m[1] for m in malformed], pa.string()))
    return pa.concat_tables([good, bad])


def _read_jsonl(path: Path, entity: str, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One JSON object per physical line; each line is parsed in SQL so a bad line rejects only itself."""
    lines = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, column_names=["line"]),
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, double_quote=False,
                                         escape_char=False, ignore_empty_lines=False,
                                         invalid_row_handler=lambda _: "error"),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.binary()}),
    )
    text, bad = _decode(lines.column("line").combine_chunks())
    utf8_err = [None] * len(text)
    for i in bad:
        utf8_err[i] = "invalid_utf8"
    src = pa.table({"line": text, "_line": pa.array(range(1, len(text) + 1), pa.int64()),
                    "_utf8": pa.array(utf8_err, pa.string())})
    # json_extract_string of NULL is NULL: invalid lines never reach the JSON parser
    fields = ", ".join(f"json_extract_string(CASE WHEN ok THEN line END, '$.{c}') AS {c}"
                       for c, _ in COLUMNS[entity])
    sql = f"""
        WITH parsed AS (
            SELECT *, CASE WHEN coalesce(json_valid(line), false)
                           THEN json_type(CASE WHEN json_valid(line) THEN line END) = 'OBJECT'
                           ELSE false END AS ok
            FROM src)
        SELECT {fields}, _line,
               coalesce(_utf8, CASE WHEN NOT ok THEN 'malformed_row (not a JSON object)' END) AS _error,
               CASE WHEN NOT ok THEN line END AS _raw
        FROM parsed ORDER BY _line"""
    return _run_arrow(con, sql, src)


def _run_arrow(con: duckdb.DuckDBPyConnection, sql: str, src: pa.Table) -> pa.Table:
    con.register("src", src)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("src")


def _read_parquet(path: Path, entity: str) -> pa.Table:
    table = pq.read_table(path)
    missing = [c for c, req in COLUMNS[entity] if req and c not in table.column_names]
    if missing:
        raise IngestError(f"{path}: missing required column(s) {missing} (rule: required_columns; "
                          f"columns are {table.column_names})")
    columns = {}
    for name, _ in COLUMNS[entity]:
        if name not in table.column_names:
            columns[name] = pa.nulls(table.num_rows, pa.string())
            continue
        col = table.column(name).combine_chunks()
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = pc.cast(col, pa.timestamp("us", "UTC"))  # strings then carry a Z: parsed as UTC
        if pa.types.is_nested(col.type) or pa.types.is_dictionary(col.type) and \
                pa.types.is_nested(col.type.value_type):
            raise IngestError(f"{path}: column {name} has type {col.type}, expected a scalar "
                              f"(rule: column_type)")
        columns[name] = pc.cast(col, pa.string())
    lines = pa.array(range(1, table.num_rows + 1), pa.int64())
    return _string_table(columns, lines, pa.nulls(table.num_rows, pa.string()))


def _empty(entity: str) -> pa.Table:
    cols = {name: pa.array([], pa.string()) for name, _ in COLUMNS[entity]}
    return _string_table(cols, pa.array([], pa.int64()), pa.array([], pa.string()))


def read_landing_file(path: Path, entity: str, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Read one landing file into strings + `_line` + `_error`; unreadable files raise IngestError."""
    try:
        if path.suffix == ".csv":
            return _read_csv(path, entity)
        if path.suffix == ".jsonl":
            return _read_jsonl(path, entity, con)
        return _read_parquet(path, entity)
    except IngestError:
        raise
    except (pa.ArrowException, OSError, duckdb.Error) as exc:
        raise IngestError(f"{path}: unreadable file (rule: readable_file): {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Rules: typed columns and the first rule each row breaks, in SQL over all files of an entity
# --------------------------------------------------------------------------------------------------

INT_RE = r"^\s*-?[0-9]+\s*$"


def _clean(col: str) -> str:
    return f"nullif(trim({col}), '')"


def _id_rules(col: str) -> list[tuple[str, str]]:
    v = _clean(col)
    return [
        (f"{col}_null", f"{v} IS NULL"),
        (f"{col}_not_integer", f"NOT regexp_full_match({v}, '{INT_RE}') OR try_cast({v} AS BIGINT) IS NULL"),
        (f"{col}_negative", f"try_cast({v} AS BIGINT) < 0"),
    ]


def _not_numeric(col: str) -> str:
    return f"{_clean(col)} IS NOT NULL AND try_cast({_clean(col)} AS DOUBLE) IS NULL"


def _not_finite(col: str) -> str:
    # 'NaN', 'inf' and '1e999' cast to DOUBLE; none is a usable rating or price
    return f"NOT isfinite(try_cast({_clean(col)} AS DOUBLE))"


def _ts_expr() -> str:
    v = _clean("ts")
    # unix seconds or ISO-8601 (naive = UTC; the session time zone is UTC, offsets are honoured)
    return (f"CASE WHEN regexp_full_match({v}, '^-?[0-9]+(\\.[0-9]+)?$') "
            f"THEN try(to_timestamp(try_cast({v} AS DOUBLE))::TIMESTAMP) "
            f"ELSE try_cast({v} AS TIMESTAMPTZ)::TIMESTAMP END")


def _typed(entity: str) -> dict[str, str]:
    """SQL expression giving each raw column its type (null when it cannot be typed)."""
    ints = {"user_id", "item_id", "age"}
    exprs = {}
    for name, _ in COLUMNS[entity]:
        if name in ints:
            exprs[name] = f"try_cast({_clean(name)} AS {'INTEGER' if name == 'age' else 'BIGINT'})"
        elif name in ("value", "price"):
            exprs[name] = f"try_cast({_clean(name)} AS DOUBLE)"
        elif name == "ts":
            exprs[name] = "_ts"  # parsed once, in _check_sql's `parsed`
        elif name == "behavior":
            exprs[name] = f"lower({_clean(name)})"
        else:
            exprs[name] = _clean(name)
    return exprs


def _rules(entity: str) -> list[tuple[str, str]]:
    """(reason, condition) pairs checked in order; the day's bounds and the behaviours are bound
    ($day_start, $day_end, $behaviors): only constants of this module are written into the SQL text."""
    all_null = " AND ".join(f"{_clean(c)} IS NULL" for c, _ in COLUMNS[entity])
    rules = [("empty_row", all_null)]
    if entity == "behaviors":
        rules += _id_rules("user_id") + _id_rules("item_id") + [
            ("behavior_null", f"{_clean('behavior')} IS NULL"),
            ("behavior_unknown", f"NOT list_contains($behaviors, lower({_clean('behavior')}))"),
            ("ts_null", f"{_clean('ts')} IS NULL"),
            ("ts_unparseable", "_ts IS NULL"),
            # ds is the local date of ts in ingest.day_timezone (UTC unless configured): a range test
            # against that day's UTC bounds, not a time-zone conversion per row
            ("ts_outside_ds", "_ts < $day_start OR _ts >= $day_end"),
            ("value_not_numeric", _not_numeric("value")),
            ("value_not_finite", _not_finite("value")),
        ]
    elif entity == "users":
        rules += _id_rules("user_id") + [
            ("age_not_integer", f"{_clean('age')} IS NOT NULL AND (NOT regexp_full_match({_clean('age')}, "
                                f"'{INT_RE}') OR try_cast({_clean('age')} AS INTEGER) IS NULL)"),
            ("age_out_of_range", f"try_cast({_clean('age')} AS INTEGER) NOT BETWEEN 0 AND 130"),
        ]
    else:
        rules += _id_rules("item_id") + [
            ("price_not_numeric", _not_numeric("price")),
            ("price_not_finite", _not_finite("price")),
            ("price_negative", f"try_cast({_clean('price')} AS DOUBLE) < 0"),
        ]
    return rules


def _dedupe_key(entity: str) -> tuple[str, str]:
    """Columns identifying one event / snapshot row, and the reason a repeat of it gets."""
    return {"behaviors": ("user_id, item_id, behavior, ts", "duplicate_event"),
            "users": ("user_id", "duplicate_user"), "items": ("item_id", "duplicate_item")}[entity]


def day_bounds(ds: str, tz: str) -> tuple[datetime, datetime]:
    """The local day ds in time zone tz as naive UTC [start, end) (23 or 25 hours across a DST change)."""
    zone, day = ZoneInfo(tz), date.fromisoformat(ds)
    start, end = (datetime.combine(d, dt_time(), zone).astimezone(UTC).replace(tzinfo=None)
                  for d in (day, day + timedelta(days=1)))
    return start, end


def _check_sql(entity: str) -> str:
    """SELECT over `landed` giving typed columns, source_file/line, the raw record and the reason.

    The timestamp is parsed once (`_ts`), for its typed column and its two rules alike, and a rejected
    row's record is serialised only for rejected rows (both were per-row costs of every event).
    """
    typed = _typed(entity)
    cases = " ".join(f"WHEN {cond} THEN '{reason}'" for reason, cond in _rules(entity))
    cols = ", ".join(f"{expr} AS {name}" for name, expr in typed.items())
    record_struct = ", ".join(f"'{c}': {c}" for c, _ in COLUMNS[entity])
    parsed_ts = f", {_ts_expr()} AS _ts" if entity == "behaviors" else ""
    key, dup_reason = _dedupe_key(entity)
    return f"""
        WITH parsed AS (
            SELECT *{parsed_ts} FROM landed),
        ruled AS (
            -- the first broken rule of each row; a row-level parse error wins
            SELECT _file AS source_file, _line AS source_line, {cols},
                   _raw, {{{record_struct}}} AS _fields,
                   coalesce(_error, CASE {cases} END) AS reason
            FROM parsed),
        deduped AS (
            -- an event (or snapshot id) seen before, in file then line order, is a duplicate
            SELECT *, CASE WHEN reason IS NULL AND row_number() OVER (
                        PARTITION BY reason IS NULL, {key} ORDER BY source_file, source_line) > 1
                      THEN '{dup_reason}' END AS dup
            FROM ruled)
        -- the record is kept for rejected rows only: nothing reads it for accepted ones
        SELECT * EXCLUDE (_raw, _fields, reason, dup),
               CASE WHEN coalesce(reason, dup) IS NOT NULL THEN coalesce(_raw, to_json(_fields)::VARCHAR) END
                   AS record,
               coalesce(reason, dup) AS reason
        FROM deduped"""


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------

def _load_entity(con: duckdb.DuckDBPyConnection, cfg: Config, entity: str, ds: str) -> EntityCounts:
    """Read, check and stage one entity into temp table `checked_<entity>`; returns its counts."""
    files = landing_files(cfg.paths.landing, entity, ds)
    if entity == "behaviors" and not files:
        folder = partition_dir(cfg.paths.landing, entity, ds)
        raise IngestError(f"{folder}: no landing files for ds={ds} (rule: partition_present; expected "
                          f"*.parquet, *.csv or *.jsonl)")
    tables = []
    for path in files:
        t = read_landing_file(path, entity, con)
        # the path once, referenced by every row (a plain string column repeats it per row: 700 MB at 10M rows)
        file_column = pa.DictionaryArray.from_arrays(pa.nulls(t.num_rows, pa.int32()).fill_null(0),
                                                     pa.array([str(path)], pa.string()))
        tables.append(t.append_column("_file", file_column))
    landed = pa.concat_tables(tables) if tables else _empty(entity).append_column(
        "_file", pa.array([], pa.string()))
    con.register("landed", landed)
    try:
        sql = _check_sql(entity)
        params = {}
        if entity == "behaviors":
            start, end = day_bounds(ds, cfg.ingest.day_timezone)
            params = {"day_start": start, "day_end": end, "behaviors": [b.lower() for b in cfg.ingest.behaviors]}
        con.execute(f"CREATE OR REPLACE TEMP TABLE checked_{entity} AS {sql}", params)
    finally:
        con.unregister("landed")
    return _counts(con, entity, landed.num_rows)


def _counts(con: duckdb.DuckDBPyConnection, entity: str, rows_in: int) -> EntityCounts:
    rows = con.execute(f"SELECT reason, count(*) FROM checked_{entity} GROUP BY ALL").fetchall()
    by_reason = {r: n for r, n in rows if r is not None}
    accepted = sum(n for r, n in rows if r is None)
    counts = EntityCounts(rows_in, accepted, sum(by_reason.values()), by_reason)
    if counts.accepted + counts.rejected != rows_in:  # the promise: nothing is lost
        raise IngestError(f"{entity}: accepted {accepted} + rejected {counts.rejected} != input {rows_in}")
    return counts


def _check_reject_rate(con: duckdb.DuckDBPyConnection, entity: str, counts: EntityCounts,
                       max_rate: float) -> None:
    if counts.rows_in == 0 or counts.rejected / counts.rows_in <= max_rate:
        return
    file, line, reason, n = con.execute(
        f"""SELECT source_file, min(source_line), reason, count(*) FROM checked_{entity}
            WHERE reason IS NOT NULL GROUP BY source_file, reason ORDER BY 4 DESC, 1, 3 LIMIT 1""").fetchone()
    raise IngestError(
        f"{entity}: {counts.rejected} of {counts.rows_in} rows rejected "
        f"({counts.rejected / counts.rows_in:.1%} > max_reject_rate {max_rate:.1%}); most frequent: {n} rows "
        f"of {file} broke rule '{reason}' (first at line {line}). Nothing was written; fix the file or "
        f"raise ingest.max_reject_rate.")


def _publish(con: duckdb.DuckDBPyConnection, ds: str, counts: dict[str, EntityCounts]) -> None:
    """Replace every raw table's ds partition in one transaction."""
    with transaction(con):
        for entity in counts:
            cols = ", ".join(c for c, _ in COLUMNS[entity])
            replace_partition(con, f"raw.{entity}", ds,
                              f"SELECT ?::DATE, {cols}, source_file, source_line FROM checked_{entity} "
                              f"WHERE reason IS NULL ORDER BY source_file, source_line", [ds])
        replace_partition(con, "raw.rejected_rows", ds, " UNION ALL ".join(
            f"SELECT ?::DATE, '{e}', source_file, source_line, reason, record FROM checked_{e} "
            f"WHERE reason IS NOT NULL" for e in counts) + " ORDER BY 2, 3, 4", [ds] * len(counts))
        replace_partition(con, "raw.ingest_files", ds, " UNION ALL ".join(
            f"SELECT ?::DATE, '{e}', source_file, count(*), count(*) FILTER (reason IS NULL), "
            f"count(*) FILTER (reason IS NOT NULL) FROM checked_{e} GROUP BY source_file"
            for e in counts) + " ORDER BY 2, 3", [ds] * len(counts))


def ingest(cfg: Config, ds: str) -> IngestResult:
    """Load ds's landing files into `raw.*` (delete+insert of the ds partition, one transaction).

    Raises IngestError when the behaviours partition is missing or empty, a file is unreadable or
    lacks a required column, or an entity's reject rate exceeds `ingest.max_reject_rate`.
    """
    ds = validate_ds(ds)
    _check_timezone(cfg.ingest.day_timezone)
    con = connect(cfg, read_only=False)
    try:
        con.execute("SET TimeZone = 'UTC'")
        # bounded: beyond it the checked rows spill to <warehouse>.tmp instead of growing the process (a
        # 10M-row day peaked at 5.6 GB unbounded). Lower than dbt's 3GB because the landed Arrow tables
        # (strings, ~1.5 GB at 10M rows) live beside it, outside DuckDB's accounting. Every read of the
        # checked rows orders explicitly, so insertion order need not be kept.
        bound_memory(con, "RECSYS_INGEST_MEMORY_LIMIT")
        con.execute("SET preserve_insertion_order = false")
        counts = {e: _load_entity(con, cfg, e, ds) for e in COLUMNS}
        if counts["behaviors"].rows_in == 0:
            raise IngestError(f"{partition_dir(cfg.paths.landing, 'behaviors', ds)}: files hold no rows "
                              f"(rule: partition_not_empty)")
        for entity, c in counts.items():
            _check_reject_rate(con, entity, c, cfg.ingest.max_reject_rate)
        _publish(con, ds, counts)
    finally:
        con.close()
    for entity, c in counts.items():
        log.info("ingest ds=%s %s: input=%d accepted=%d rejected=%d %s", ds, entity, c.rows_in,
                 c.accepted, c.rejected, c.rejected_by_reason or "")
    return IngestResult(ds, counts)


def _check_timezone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"ingest.day_timezone {tz!r} is not an IANA time zone (e.g. UTC, Asia/Shanghai)") from exc


def previous_ds(ds: str, days: int = 1) -> str:
    return (date.fromisoformat(ds) - timedelta(days=days)).isoformat()
