"""Importers from public data sets into the landing layout (docs/architecture.md, "Landing contract").

- MovieLens, four layouts detected from the folder: ML-100K (`u.data`, `u.user`, `u.item`), ML-1M
  (`ratings.dat`, `users.dat`, `movies.dat`, `::`-separated), the CSV releases (`ratings.csv`,
  `movies.csv`) and the atomic files (`<name>.inter`, `<name>.user`, `<name>.item`, typed headers).
  The path may be the release folder, a file in it, or the folder the zip was unpacked into (holding one
  release folder such as `ml-100k/`). Every rating becomes a `rating` behaviour with the rating as `value`,
  in the partition of its UTC day. Ratings are streamed typed into numpy arrays, sorted by time and
  written day by day (ML-25M's 25M ratings: about 40 s and 1.4 GB peak).
- Taobao UserBehavior.csv (Tianchi): 100M rows, streamed in blocks; its days are Beijing days, so the
  ds of an event is its date in UTC+8 while `ts` stays UTC. Rows that cannot be imported go, with file,
  line and reason, to `<landing>/_rejected/taobao/rejected.csv`: rows in = rows written + rows rejected.

Profiles and catalogues are written as snapshots into the first ds written, so they are in place before
the first day's behaviours are ingested.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.landing import PartitionStream, temp_path, write_partition

EPOCH = date(1970, 1, 1)
DAY_S = 86_400
BEIJING_OFFSET_S = 8 * 3600

BEHAVIOR_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("behavior", pa.string()),
                             ("ts", pa.timestamp("us")), ("value", pa.float64()), ("device", pa.string())])
USER_SCHEMA = pa.schema([("user_id", pa.int64()), ("age", pa.int32()), ("gender", pa.string()),
                         ("city", pa.string()), ("occupation", pa.string())])
ITEM_SCHEMA = pa.schema([("item_id", pa.int64()), ("category", pa.string()), ("brand", pa.string()),
                         ("price", pa.float64()), ("title", pa.string())])
REJECT_SCHEMA = pa.schema([("source_file", pa.string()), ("source_line", pa.int64()),
                           ("reason", pa.string()), ("record", pa.string())])

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                 "Sci-Fi", "Thriller", "War", "Western")
# ML-1M users.dat codes its occupations (README of ml-1m)
ML1M_OCCUPATIONS = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
TAOBAO_BEHAVIORS = {"pv": "view", "fav": "fav", "cart": "cart", "buy": "buy"}


@dataclass
class ImportSummary:
    """What an import read and wrote. rows_in = rows_written + rows_rejected + rows_skipped_outside_window.

    users / items count the distinct ids in the behaviours written.
    """

    source_format: str
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    rows_skipped_outside_window: int = 0
    days: list[str] = field(default_factory=list)
    users: int = 0
    items: int = 0
    rejected_path: Path | None = None

    def __rich_repr__(self) -> Iterator[tuple[str, object]]:
        """The CLI prints the summary with rich: the days as a range (ML-25M has 9,000 of them)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "days" and value:
                value = f"{value[0]} .. {value[-1]} ({len(value)} days)"
            yield f.name, value


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------

def _ds(day_number: int) -> str:
    """Days since 1970-01-01 -> 'YYYY-MM-DD'."""
    return (EPOCH + timedelta(days=int(day_number))).isoformat()


def _day_number(d: date) -> int:
    return (d - EPOCH).days


def _text_encoding(path: Path) -> str:
    """'utf8' when the file decodes as UTF-8, else 'latin-1' (ML-100K u.item and ML-1M movies.dat are
    ISO-8859-1; the CSV releases are UTF-8). Only used on the small catalogue files."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf8"


def _read_table(path: Path, names: list[str], delimiter: str, types: dict[str, pa.DataType] | None = None,
                encoding: str = "utf8", header_rows: int = 0, quoted: bool = False) -> pa.Table:
    """A headerless (or header-skipped) delimited file with the given column names; columns not in
    `types` are strings. A value that does not convert raises ValueError naming file, row and column.

    MovieLens' tab and pipe files are not quoted (titles contain `"`), so quoting is off unless asked.
    """
    types = {n: (types or {}).get(n, pa.string()) for n in names}
    try:
        return _arrow_read(path, names, delimiter, types, encoding, header_rows, quoted)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        where = _locate_bad_value(path, names, delimiter, types, encoding, header_rows, quoted)
        raise ValueError(f"{path}: cannot read as {len(names)} {delimiter!r}-separated columns "
                         f"({', '.join(names)}): {where or exc}") from exc


def _arrow_read(path: Path, names: list[str], delimiter: str, types: dict[str, pa.DataType], encoding: str,
                header_rows: int, quoted: bool) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=header_rows, encoding=encoding),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False),
        convert_options=pacsv.ConvertOptions(column_types=types))


# what Arrow's CSV reader accepts for a type (it does not trim spaces)
_TYPE_PATTERNS = {pa.int64(): r"^[+-]?[0-9]+$", pa.int8(): r"^[+-]?[0-9]+$",
                  pa.float64(): r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$", pa.null(): r"^$"}
_TYPE_WORDS = {pa.int64(): "an integer", pa.int8(): "an integer", pa.float64(): "a number",
               pa.null(): "empty (fields are separated by '::', not ':')"}


def _locate_bad_value(path: Path, names: list[str], delimiter: str, types: dict[str, pa.DataType],
                      encoding: str, header_rows: int, quoted: bool) -> str | None:
    """Error path only: the first value that breaks its column's type, as 'data row N, column C: 'v''
    (Arrow's conversion errors name neither row nor line); None when the file does not even split."""
    try:
        text = _arrow_read(path, names, delimiter, dict.fromkeys(names, pa.string()), encoding, header_rows,
                           quoted)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    for name, dtype in types.items():
        if dtype not in _TYPE_PATTERNS:
            continue
        ok = pc.fill_null(pc.match_substring_regex(text.column(name), _TYPE_PATTERNS[dtype]), dtype == pa.null())
        if (bad := np.flatnonzero(~ok.to_numpy(zero_copy_only=False))).size:
            value = text.column(name)[int(bad[0])].as_py()
            return f"data row {bad[0] + 1}, column {name}: {value!r} is not {_TYPE_WORDS[dtype]}"
    return None


def _null_strings(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _first_token(values: pa.Array, separator: str) -> pa.Array:
    """The first `separator`-separated token of each string; empty -> null."""
    first = pc.list_element(pc.split_pattern(pc.fill_null(values, ""), separator), 0)
    return pc.if_else(pc.equal(first, ""), _null_strings(len(first)), first)


def _int_column(table: pa.Table, name: str, path: Path, dtype: pa.DataType | None = None) -> pa.Array:
    """A column as integers (int64 unless dtype); a non-integer raises ValueError naming file and column."""
    dtype = dtype or pa.int64()
    col = pc.utf8_trim_whitespace(table.column(name)) if pa.types.is_string(table.column(name).type) \
        else table.column(name)
    try:
        return pc.cast(col, dtype)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: column {name} is not integer: {exc}") from exc


# ------------------------------------------------------------------------------------------------
# MovieLens
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MovieLensFiles:
    fmt: str
    ratings: Path
    items: Path | None
    users: Path | None


_ML_LAYOUTS = (  # format, ratings, items, users (detection order)
    ("ml-100k", "u.data", "u.item", "u.user"),
    ("ml-1m", "ratings.dat", "movies.dat", "users.dat"),
    ("ml-csv", "ratings.csv", "movies.csv", None),
)
# the train/test splits shipped with ML-100K (mku.sh, allbut.pl): u.data's columns, a subset of its rows
_ML100K_SPLIT = re.compile(r"^u([1-5]|a|b)\.(base|test)$")
# Ratings as numpy arrays [N]: user_id, item_id (int64), rating (float64), timestamp (int64 unix seconds)
Ratings = dict[str, np.ndarray]


def detect_movielens(path: Path) -> _MovieLensFiles:
    """Find the MovieLens layout of a folder, of the folder of a file, or of the one release folder inside
    a folder (the zip's `ml-100k/`); ValueError when there is none or more than one release folder.

    A file named on the command line picks its own layout; an ML-100K split (`u1.base`, `ua.test`, ...)
    is imported instead of `u.data`; any other file (README, tags.csv, u.genre) means its folder.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    candidates = _layouts_in(path.parent if path.is_file() else path)
    if not candidates and path.is_dir():
        candidates = _release_subfolder(path)
    if not candidates:
        looked = "; ".join(f"{r} (+ {i}{', ' + u if u else ''})" for _, r, i, u in _ML_LAYOUTS)
        raise ValueError(f"{path}: no MovieLens files found (nor in a release folder inside it); looked for "
                         f"{looked}; <name>.inter (+ <name>.item, <name>.user)")
    if path.is_file():
        named = [c for c in candidates if path in (c.ratings, c.items, c.users)]
        if named:
            return named[0]
        if _ML100K_SPLIT.match(path.name) and candidates[0].fmt == "ml-100k":
            return dataclasses.replace(candidates[0], ratings=path)
    return candidates[0]


def _layouts_in(folder: Path) -> list[_MovieLensFiles]:
    """Every MovieLens layout whose ratings file is in `folder`, in detection order."""
    candidates = [_MovieLensFiles(fmt, folder / ratings, _existing(folder, items), _existing(folder, users))
                  for fmt, ratings, items, users in _ML_LAYOUTS if (folder / ratings).is_file()]
    for inter in sorted(folder.glob("*.inter")):
        candidates.append(_MovieLensFiles("atomic", inter, _existing(folder, inter.stem + ".item"),
                                          _existing(folder, inter.stem + ".user")))
    return candidates


def _release_subfolder(folder: Path) -> list[_MovieLensFiles]:
    """The layouts of the single release folder inside `folder` (e.g. the `ml-100k/` of ml-100k.zip)."""
    found = {sub: layouts for sub in sorted(p for p in folder.iterdir() if p.is_dir())
             if (layouts := _layouts_in(sub))}
    if len(found) > 1:
        raise ValueError(f"{folder}: holds {len(found)} MovieLens releases "
                         f"({', '.join(sub.name for sub in found)}); pass one of these folders")
    return next(iter(found.values()), [])


def _existing(folder: Path, name: str | None) -> Path | None:
    return folder / name if name and (folder / name).is_file() else None


def import_movielens(path: Path, landing: Path, start: date | None = None,
                     end: date | None = None) -> ImportSummary:
    """Import a MovieLens release; optional start/end (UTC dates, inclusive) restrict the days written."""
    files = detect_movielens(path)
    read_ratings, read_profiles = _ML_READERS[files.fmt]
    users, items = read_profiles(files)
    return _write_ratings(files.fmt, read_ratings(files), users, items, Path(landing), start, end)


RATINGS_BLOCK_BYTES = 1 << 20   # Arrow's default; the streaming reader reads up to 32 blocks ahead
_RATING_KEYS = ("user_id", "item_id", "rating", "timestamp")
_RATING_DTYPES = (np.int64, np.int64, np.float64, np.int64)


def _read_ratings(path: Path, names: list[str], columns: tuple[str, str, str, str], delimiter: str, *,
                  types: dict[str, pa.DataType] | None = None, header_rows: int = 0, quoted: bool = False,
                  float_ts: bool = False) -> Ratings:
    """The rating columns (`columns`: user, item, rating, timestamp of the file's `names`) as numpy arrays [N].

    Streamed in batches into arrays sized by a line count, so a 25M-row file costs its four arrays
    (800 MB) and no Arrow table beside them. `float_ts`: the timestamp is typed float (atomic files) and
    must hold whole seconds. A value that does not convert raises ValueError naming row and column.
    """
    user, item, rating, ts = columns
    types = {**(types or {}), user: pa.int64(), item: pa.int64(), rating: pa.float64(),
             ts: pa.float64() if float_ts else pa.int64()}   # other columns are split but not converted
    capacity = _count_lines(path)
    out = {key: np.empty(capacity, dtype) for key, dtype in zip(_RATING_KEYS, _RATING_DTYPES, strict=True)}
    n = 0
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, skip_rows=header_rows,
                                                 block_size=RATINGS_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)))
        for batch in reader:
            for key, name in zip(_RATING_KEYS, columns, strict=True):
                out[key][n:n + batch.num_rows] = _rating_values(batch.column(name), path, name,
                                                                whole=key == "timestamp")
            n += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        where = _locate_bad_value(path, names, delimiter, types, "utf8", header_rows, quoted)
        raise ValueError(f"{path}: cannot read as {len(names)} {delimiter!r}-separated columns "
                         f"({', '.join(names)}): {where or exc}") from exc
    return {key: values[:n] for key, values in out.items()}


def _rating_values(column: pa.Array, path: Path, name: str, whole: bool) -> np.ndarray:
    """One batch of a rating column as numpy; empty values (and fractional ones where `whole`) raise."""
    if column.null_count:
        raise ValueError(f"{path}: {column.null_count} empty values in column {name}")
    values = column.to_numpy()
    if whole and values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        raise ValueError(f"{path}: column {name} holds a timestamp that is not whole seconds")
    return values


def _count_lines(path: Path) -> int:
    """An upper bound of the rows of a file: its line breaks (LF, or CR for a file of CR line ends, as
    Arrow's reader splits at both) plus one for a last line without a break."""
    lf = cr = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            lf, cr = lf + chunk.count(b"\n"), cr + chunk.count(b"\r")
    return max(lf, cr) + 1


def _users_table(u: pa.Table, path: Path, occupation: pa.Array | None = None) -> pa.Table:
    """Users snapshot from columns user_id, age, gender, occupation (or the occupation given)."""
    # MovieLens has zip codes, not cities: city stays null rather than a high-cardinality stand-in
    occupation = u.column("occupation") if occupation is None else occupation
    return pa.table([_int_column(u, "user_id", path), _int_column(u, "age", path, pa.int32()),
                     u.column("gender"), _null_strings(u.num_rows), occupation],
                    schema=USER_SCHEMA)


def _items_table(item_id: pa.Array, category: pa.Array, title: pa.Array) -> pa.Table:
    n = len(item_id)
    return pa.table([item_id, category, _null_strings(n), pa.nulls(n, pa.float64()), title],
                    schema=ITEM_SCHEMA)


_ML100K_RATINGS = ("user_id", "item_id", "rating", "timestamp")


def _ml100k_ratings(files: _MovieLensFiles) -> Ratings:
    return _read_ratings(files.ratings, list(_ML100K_RATINGS), _ML100K_RATINGS, "\t")


def _ml100k_profiles(files: _MovieLensFiles) -> tuple[pa.Table | None, pa.Table | None]:
    users = items = None
    if files.users:
        users = _users_table(_read_table(files.users, ["user_id", "age", "gender", "occupation", "zip"], "|"),
                             files.users)
    if files.items:
        names = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
        it = _read_table(files.items, names, "|", {g: pa.int8() for g in ML100K_GENRES},
                         encoding=_text_encoding(files.items))
        flags = np.column_stack([it.column(g).to_numpy(zero_copy_only=False) for g in ML100K_GENRES]) > 0
        first = pc.take(pa.array(ML100K_GENRES), pa.array(flags.argmax(axis=1)))
        category = pc.if_else(pa.array(flags.any(axis=1)), first, _null_strings(it.num_rows))
        items = _items_table(_int_column(it, "item_id", files.items), category, it.column("title"))
    return users, items


def _double_colon_columns(names: list[str]) -> tuple[list[str], dict[str, pa.DataType]]:
    """Column names and types to read a `::`-separated file whose fields hold no ':' (ratings.dat,
    users.dat) with Arrow's one-character delimiter ':': the field between the two colons of each `::`
    is typed null, so it must be empty and a stray single ':' fails the read."""
    wide = [part for i, n in enumerate(names) for part in ((n,) if i == 0 else (f"_sep{i}", n))]
    return wide, {n: pa.null() for n in wide if n.startswith("_sep")}


def _read_double_colon(path: Path, names: list[str]) -> pa.Table:
    """A small `::`-separated file whose fields hold no ':' (users.dat) as string columns `names`."""
    wide, seps = _double_colon_columns(names)
    return _read_table(path, wide, ":", seps).select(names)


def _read_double_colon_lines(path: Path, names: list[str]) -> pa.Table:
    """An ML-1M `::`-separated file whose fields may hold ':' (movies.dat titles do), as strings."""
    lines = _read_table(path, ["line"], "\x1f", encoding=_text_encoding(path)).column("line")
    parts = pc.split_pattern(lines, "::")
    counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    if (bad := np.flatnonzero(counts != len(names))).size:
        raise ValueError(f"{path}: line {bad[0] + 1} has {counts[bad[0]]} '::'-separated fields, "
                         f"expected {len(names)} ({', '.join(names)})")
    return pa.table({n: pc.list_element(parts, i) for i, n in enumerate(names)})


def _ml1m_ratings(files: _MovieLensFiles) -> Ratings:
    wide, seps = _double_colon_columns(list(_ML100K_RATINGS))
    return _read_ratings(files.ratings, wide, _ML100K_RATINGS, ":", types=seps)


def _ml1m_profiles(files: _MovieLensFiles) -> tuple[pa.Table | None, pa.Table | None]:
    users = items = None
    if files.users:
        # age is ML-1M's age-group code (1, 18, 25, 35, 45, 50, 56: the lower bound of the group)
        u = _read_double_colon(files.users, ["user_id", "gender", "age", "occupation", "zip"])
        code = _int_column(u, "occupation", files.users)
        known = pc.less(code, len(ML1M_OCCUPATIONS))
        occupation = pc.if_else(known, pc.take(pa.array(ML1M_OCCUPATIONS), pc.if_else(known, code, 0)),
                                pc.cast(code, pa.string()))
        users = _users_table(u, files.users, occupation)
    if files.items:
        m = _read_double_colon_lines(files.items, ["item_id", "title", "genres"])
        items = _items_table(_int_column(m, "item_id", files.items), _first_token(m.column("genres"), "|"),
                             m.column("title"))
    return users, items


_CSV_RATINGS = ("userId", "movieId", "rating", "timestamp")


def _ml_csv_ratings(files: _MovieLensFiles) -> Ratings:
    return _read_ratings(files.ratings, list(_CSV_RATINGS), _CSV_RATINGS, ",", header_rows=1, quoted=True)


def _ml_csv_profiles(files: _MovieLensFiles) -> tuple[pa.Table | None, pa.Table | None]:
    items = None
    if files.items:
        # titles with a comma are quoted, a quote inside a title is doubled (RFC 4180)
        m = _read_table(files.items, ["movieId", "title", "genres"], ",", header_rows=1, quoted=True,
                        encoding=_text_encoding(files.items))
        genre = _first_token(m.column("genres"), "|")
        genre = pc.if_else(pc.equal(genre, "(no genres listed)"), _null_strings(len(genre)), genre)
        items = _items_table(_int_column(m, "movieId", files.items), genre, m.column("title"))
    return None, items  # the CSV releases carry no user profiles


def _atomic_header(path: Path) -> list[str]:
    """Column names of an atomic file: its tab-separated typed header (`name:token`) without the types."""
    with open(path, encoding="utf-8") as fh:
        return [h.split(":")[0] for h in fh.readline().rstrip("\r\n").split("\t")]


def _atomic(path: Path, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    return _read_table(path, _atomic_header(path), "\t", types, header_rows=1)


def _ml_atomic_ratings(files: _MovieLensFiles) -> Ratings:
    if missing := set(_ML100K_RATINGS) - set(_atomic_header(files.ratings)):
        raise ValueError(f"{files.ratings}: header lacks {', '.join(sorted(missing))}")
    # `timestamp:float` in the header; extra columns (e.g. `review:token_seq`) stay strings
    return _read_ratings(files.ratings, _atomic_header(files.ratings), _ML100K_RATINGS, "\t", header_rows=1,
                         float_ts=True)


def _ml_atomic_profiles(files: _MovieLensFiles) -> tuple[pa.Table | None, pa.Table | None]:
    users = items = None
    if files.users:
        users = _users_table(_atomic(files.users), files.users)
    if files.items:
        it = _atomic(files.items)
        title = it.column("movie_title") if "movie_title" in it.column_names else _null_strings(it.num_rows)
        category = _first_token(it.column("class"), " ")
        items = _items_table(_int_column(it, "item_id", files.items), category, title)
    return users, items


_ML_READERS = {"ml-100k": (_ml100k_ratings, _ml100k_profiles), "ml-1m": (_ml1m_ratings, _ml1m_profiles),
               "ml-csv": (_ml_csv_ratings, _ml_csv_profiles), "atomic": (_ml_atomic_ratings, _ml_atomic_profiles)}


def _write_ratings(fmt: str, ratings: Ratings, users: pa.Table | None, items: pa.Table | None,
                   landing: Path, start: date | None, end: date | None) -> ImportSummary:
    """One behaviours partition per UTC day inside [start, end]; snapshots into the first day written.

    `ratings` is filtered and sorted in place (its arrays are replaced one by one, so that a 25M-row
    release never holds two copies of every column).
    """
    rows_in = len(ratings["timestamp"])
    _keep_window(ratings, start, end)
    _sort_by_time(ratings)
    days = _write_by_day(landing, ratings)
    if days:
        for entity, snapshot in (("users", users), ("items", items)):
            if snapshot is not None:
                write_partition(landing, entity, days[0], snapshot)
    written = len(ratings["timestamp"])
    return ImportSummary(fmt, rows_in=rows_in, rows_written=written, rows_skipped_outside_window=rows_in - written,
                         days=days, users=len(np.unique(ratings["user_id"])),
                         items=len(np.unique(ratings["item_id"])))


def _keep_window(ratings: Ratings, start: date | None, end: date | None) -> None:
    """Drop the ratings outside the UTC days [start, end] (either bound optional)."""
    seconds = ratings["timestamp"]
    keep = np.ones(len(seconds), bool)
    if start is not None:
        keep &= seconds >= _day_number(start) * DAY_S
    if end is not None:
        keep &= seconds < (_day_number(end) + 1) * DAY_S
    if not keep.all():
        for key in ratings:
            ratings[key] = ratings[key][keep]


def _sort_by_time(ratings: Ratings) -> None:
    """Sort by time, ties broken by user then item, so that every rerun writes the same files."""
    order = np.lexsort((ratings["item_id"], ratings["user_id"], ratings["timestamp"]))
    for key in ratings:
        ratings[key] = ratings[key][order]


def _write_by_day(landing: Path, ratings: Ratings) -> list[str]:
    """Write time-sorted ratings as one partition per UTC day that has any; returns the ds written."""
    seconds = ratings["timestamp"]
    if not len(seconds):
        return []
    first = int(seconds[0] // DAY_S)
    day_numbers = np.arange(first, int(seconds[-1] // DAY_S) + 2)
    edges = np.searchsorted(seconds, day_numbers * DAY_S)   # row range of day d: edges[d - first] ..
    days = []
    for d, lo, hi in zip(day_numbers[:-1], edges[:-1], edges[1:], strict=True):
        if hi > lo:
            days.append(_ds(d))
            write_partition(landing, "behaviors", days[-1], _rating_rows(ratings, slice(lo, hi)))
    return days


def _rating_rows(ratings: Ratings, rows: slice) -> pa.Table:
    """The ratings in `rows` as `rating` behaviours (BEHAVIOR_SCHEMA)."""
    n = rows.stop - rows.start
    return pa.table([pa.array(ratings["user_id"][rows]), pa.array(ratings["item_id"][rows]),
                     pa.repeat("rating", n), pa.array(ratings["timestamp"][rows] * 1_000_000, pa.timestamp("us")),
                     pa.array(ratings["rating"][rows]), _null_strings(n)], schema=BEHAVIOR_SCHEMA)


# ------------------------------------------------------------------------------------------------
# Taobao UserBehavior.csv
# ------------------------------------------------------------------------------------------------

TAOBAO_BLOCK_BYTES = 16 << 20   # ~470k lines per streamed batch
TAOBAO_MAX_LINE_BYTES = 1 << 20
_INT = r"^[0-9]{1,18}$"         # non-negative and fits int64
_TS = r"^-?[0-9]+$"
_TS_FITS = r"^-?[0-9]{1,12}$"   # longer integers lie tens of thousands of years away: outside the window
# rules in the order they are checked; a row gets the first one it breaks (code = position + 1)
_TAOBAO_RULES = ("invalid_utf8", "empty_row", "malformed_row", "user_id_not_integer", "item_id_not_integer",
                 "category_id_not_integer", "behavior_unknown", "ts_not_integer", "outside_window")


class _RejectSink:
    """Rejected rows streamed to a temp CSV, moved into place on commit (a rerun replaces the file)."""

    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final, self.tmp, self.rows = final, temp_path(final), 0
        self._writer = pacsv.CSVWriter(self.tmp, REJECT_SCHEMA,
                                       write_options=pacsv.WriteOptions(quoting_style="needed"))

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


def import_taobao(path: Path, landing: Path, start: date = date(2017, 11, 25),
                  end: date = date(2017, 12, 3)) -> ImportSummary:
    """Stream UserBehavior.csv (user, item, category, pv|fav|cart|buy, unix seconds; no header) into
    behaviours partitions by Beijing date in [start, end]; `ts` is written in UTC.

    Rows outside the window, of unknown behaviour or with unparsable fields are written with their line
    and reason to `<landing>/_rejected/taobao/rejected.csv`, never to the landing partitions.
    """
    path, landing = Path(path), Path(landing)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected Tianchi UserBehavior.csv)")
    window = (_day_number(start), _day_number(end))
    stream = PartitionStream(landing, "behaviors", BEHAVIOR_SCHEMA)
    rejects = _RejectSink(landing / "_rejected" / "taobao" / "rejected.csv")
    seen = _SeenIds()
    rows_in = 0
    try:
        for batch in _taobao_batches(path):
            good, bad = parse_taobao_lines(batch, rows_in + 1, window, str(path))
            rows_in += len(batch)
            rejects.write(bad)
            _write_taobao_days(stream, good)
            seen.add(good)
        days = stream.commit()
    except BaseException as exc:
        stream.abort()
        rejects.abort()
        if isinstance(exc, pa.ArrowInvalid):
            raise ValueError(f"{path}: unreadable near line {rows_in + 1}: {exc}") from exc
        raise
    rejects.commit()
    if days:
        write_partition(landing, "items", days[0], seen.items_table())
    written = sum(stream.rows.values())
    return ImportSummary("taobao", rows_in=rows_in, rows_written=written, rows_rejected=rejects.rows,
                         days=days, users=len(seen.users), items=len(seen.items), rejected_path=rejects.final)


def _taobao_batches(path: Path) -> Iterator[pa.Array]:
    """Each physical line (line break dropped) as one binary value, in blocks of whole lines.

    Plain reads, not Arrow's streaming CSV reader: that one reads up to 32 blocks ahead of a slower
    consumer (0.5-1 GB at this block size, measured), chokes on a line longer than a block, and no
    delimiter or quote parsing is wanted here (bad lines must survive to be rejected with their line).
    """
    with open(path, "rb") as fh:
        tail = b""
        while chunk := fh.read(TAOBAO_BLOCK_BYTES):
            data = tail + chunk
            end = data.rfind(b"\n") + 1   # 0: a line longer than the block so far, read on
            tail = data[end:]
            if len(tail) > TAOBAO_MAX_LINE_BYTES:
                raise ValueError(f"{path}: a line longer than {TAOBAO_MAX_LINE_BYTES} bytes; "
                                 "not a UserBehavior.csv (one short CSV line per event)")
            if end:
                yield _lines(data, end)
        if tail:   # the last line has no line break
            yield _lines(tail + b"\n", len(tail) + 1)


def _lines(data: bytes, end: int) -> pa.Array:
    """The `\\n`-terminated lines of data[:end] as a binary array [N] without their `\\n` (no copy of data
    until the slice); the `\\r` of a CRLF file is dropped by parse_taobao_lines."""
    breaks = np.flatnonzero(np.frombuffer(data, np.uint8, count=end) == ord("\n"))
    offsets = np.r_[0, breaks + 1].astype(np.int32)
    with_breaks = pa.Array.from_buffers(pa.binary(), len(breaks), [None, pa.py_buffer(offsets),
                                                                   pa.py_buffer(data)])
    return pc.binary_slice(with_breaks, 0, -1)


def _decode(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> UTF-8 strings [N] and a mask [N] of invalid rows (decoded with replacement characters)."""
    try:
        return pc.cast(raw, pa.string()), np.zeros(len(raw), bool)
    except pa.ArrowInvalid:
        values = raw.to_pylist()  # rare path: only a block that holds invalid bytes is decoded row by row
        bad = np.zeros(len(values), bool)
        for i, v in enumerate(values):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
        return pa.array([v.decode("utf-8", errors="replace") for v in values], pa.string()), bad


def _known_behavior(behavior: pa.Array) -> np.ndarray:
    known = pc.is_in(behavior, pa.array(list(TAOBAO_BEHAVIORS)))
    return pc.fill_null(known, False).to_numpy(zero_copy_only=False)


def _matches(values: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(values, pattern), False).to_numpy(zero_copy_only=False)


def parse_taobao_lines(raw: pa.Array, first_line: int, window: tuple[int, int],
                       source: str) -> tuple[pa.Table, pa.Table]:
    """Parse a block of raw lines [N] starting at physical line `first_line` (1-based).

    Returns (good rows in BEHAVIOR_SCHEMA plus `day`, the Beijing day number; rejected rows in
    REJECT_SCHEMA). `window` is the inclusive range of Beijing day numbers kept.
    """
    text, bad_utf8 = _decode(raw)
    text = pc.utf8_rtrim(text, characters="\r")   # CRLF line ends
    # five trailing commas make list_element safe on short rows; the field count is length - 5
    parts = pc.split_pattern(pc.binary_join_element_wise(text, ",,,,,", ""), ",")
    n_fields = pc.list_value_length(parts).to_numpy(zero_copy_only=False) - 5
    f = [pc.utf8_trim_whitespace(pc.list_element(parts, i)) for i in range(5)]
    behavior = pc.utf8_lower(f[3])
    ok_ts, fits = _matches(f[4], _TS), _matches(f[4], _TS_FITS)
    seconds = pc.cast(pc.if_else(pa.array(fits), f[4], "0"), pa.int64()).to_numpy()
    day = (seconds + BEIJING_OFFSET_S) // DAY_S   # floor division: the Beijing calendar day
    broken = [bad_utf8, _matches(text, r"^\s*$"), n_fields != 5, ~_matches(f[0], _INT), ~_matches(f[1], _INT),
              ~_matches(f[2], _INT), ~_known_behavior(behavior), ~ok_ts,
              ~fits | (day < window[0]) | (day > window[1])]
    code = np.zeros(len(text), np.int8)
    for k in range(len(broken) - 1, -1, -1):   # reversed so that the first broken rule wins
        code[broken[k]] = k + 1
    good = np.flatnonzero(code == 0)
    return (_taobao_good(f, behavior, seconds, day, good),
            _taobao_bad(text, n_fields, code, first_line, source))


def _taobao_good(f: list[pa.Array], behavior: pa.Array, seconds: np.ndarray, day: np.ndarray,
                 good: np.ndarray) -> pa.Table:
    idx = pa.array(good)
    mapped = pc.take(pa.array(list(TAOBAO_BEHAVIORS.values())),
                     pc.index_in(behavior.take(idx), pa.array(list(TAOBAO_BEHAVIORS))))
    return pa.table({
        "user_id": pc.cast(f[0].take(idx), pa.int64()), "item_id": pc.cast(f[1].take(idx), pa.int64()),
        "behavior": mapped, "ts": pa.array(seconds[good] * 1_000_000, pa.timestamp("us")),
        "value": pa.nulls(len(good), pa.float64()), "device": _null_strings(len(good)),
        "category": pc.cast(pc.cast(f[2].take(idx), pa.int64()), pa.string()),
        "day": pa.array(day[good]),
    })


def _taobao_bad(text: pa.Array, n_fields: np.ndarray, code: np.ndarray, first_line: int,
                source: str) -> pa.Table:
    bad = np.flatnonzero(code > 0)
    reason = pc.take(pa.array(("",) + _TAOBAO_RULES), pa.array(code[bad]))
    malformed = code[bad] == _TAOBAO_RULES.index("malformed_row") + 1
    detail = pc.binary_join_element_wise("malformed_row (expected 5 fields, got ",
                                         pc.cast(pa.array(n_fields[bad]), pa.string()), ")", "")
    reason = pc.if_else(pa.array(malformed), detail, reason)
    return pa.table([pa.array(np.full(len(bad), source)), pa.array(bad + first_line, pa.int64()), reason,
                     text.take(pa.array(bad))], schema=REJECT_SCHEMA)


def _write_taobao_days(stream: PartitionStream, good: pa.Table) -> None:
    """Append a block's rows to the partition of each Beijing day they belong to."""
    day = good.column("day").to_numpy()
    order = np.argsort(day, kind="stable")
    values, first = np.unique(day[order], return_index=True)
    bounds = np.r_[first, len(order)]
    for d, lo, hi in zip(values, bounds[:-1], bounds[1:], strict=True):
        stream.write(_ds(d), good.take(pa.array(order[lo:hi])))


class _SeenIds:
    """Distinct users and items (with each item's first category) over all streamed blocks.

    Blocks are de-duplicated on arrival and merged into the running sets only once the pending part
    outgrows them, so the total sorting work stays proportional to the input (amortised), not blocks x ids.
    """

    def __init__(self) -> None:
        self._users: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._cats: list[np.ndarray] = []
        self._pending = 0

    def add(self, good: pa.Table) -> None:
        users = np.unique(good.column("user_id").to_numpy())
        items, first = np.unique(good.column("item_id").to_numpy(), return_index=True)
        self._users.append(users)
        self._items.append(items)
        self._cats.append(pc.cast(good.column("category"), pa.int64()).to_numpy()[first])
        self._pending += len(items) + len(users)
        if self._pending > max(len(self._items[0]) + len(self._users[0]), 1 << 22):
            self._merge()

    def _merge(self) -> None:
        """Collapse the lists into one sorted array each; earlier blocks win an item's category."""
        if len(self._items) <= 1 and self._pending == 0:
            return
        self._users = [np.unique(np.concatenate(self._users))]
        items, first = np.unique(np.concatenate(self._items), return_index=True)
        self._cats = [np.concatenate(self._cats)[first]]
        self._items = [items]
        self._pending = 0

    @property
    def users(self) -> np.ndarray:
        self._merge()
        return self._users[0] if self._users else np.empty(0, np.int64)

    @property
    def items(self) -> np.ndarray:
        self._merge()
        return self._items[0] if self._items else np.empty(0, np.int64)

    def items_table(self) -> pa.Table:
        items = self.items
        categories = self._cats[0] if self._cats else np.empty(0, np.int64)
        return _items_table(pa.array(items, pa.int64()), pc.cast(pa.array(categories, pa.int64()), pa.string()),
                            _null_strings(len(items)))
