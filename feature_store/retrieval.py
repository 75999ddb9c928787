"""Training and scoring frames: encoded feature arrays built in SQL, fetched as Arrow, viewed as numpy.

Encoding happens inside DuckDB: every categorical value is joined against `features.vocab` (a value
missing from the vocabulary, or NULL, becomes 1 = unknown), history lists are unnested with their
positions, joined, and aggregated back in order, truncated to the most recent `max_len` and padded
with 0 at the end to a fixed-size array. A fixed-size Arrow list is one flat buffer, so it becomes a
`[N, max_len]` numpy array by a reshape; there is no Python work per row. Session features (DSIN) are
lists of lists: both levels are unnested with their positions, encoded, and rebuilt as a fixed-size
`[N, max_sessions, max_len]` array (the most recent sessions, oldest first, each its most recent
behaviours; all-zero sessions pad the end). DIEN's negative histories are sequences like any other.

Point in time:
- training frames read `marts.training_examples` (one row per example: target, profile, context, label)
  and `marts.training_histories` (one row per positive event: histories, DIEN negatives and sessions
  strictly before the event, shared by the positive and its negatives through `event_id`);
- scoring frames read the candidates of ds with the user's history and profile as of the END of ds
  (`marts.user_histories` / `marts.user_features` of ds): the recommendations are for ds + 1.
  Context features (hour, weekday) describe a visit that has not happened yet, so at scoring time
  they are the unknown index 1 for every row (their `scoring_source` is null in specs.yaml).

A scoring frame keeps the user-side arrays once per user (`user_columns`, gathered through
`user_index` when a batch is built), so 200 candidates of one user do not copy the user's history 200 times.
A training frame does the same per positive event: its history arrays are fetched once per row of
`marts.training_histories` and shared by the positive and its negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from feature_store.spec import FeatureSpec, FeatureSpecs
from feature_store.vocab import UNKNOWN, require_vocab, vocab_sizes

if TYPE_CHECKING:
    from recsys.models.features import FeatureMap

TRAINING_TABLE = "marts.training_examples"
HISTORIES_TABLE = "marts.training_histories"
CANDIDATES_TABLE = "marts.scoring_candidates"


@dataclass(frozen=True)
class Frame:
    """Encoded features as numpy arrays.

    Attributes:
        columns: per-row arrays: categorical int64 [N], sequences int64 [N, T], sessions int64 [N, S, L],
            numeric float32 [N],
            the history length int64 [N] and (training) the label float32 [N].
        keys: per-row raw identifiers: user_id, item_id [N] int64, ds [N] datetime64, and for scoring
            frames candidate_source [N] object.
        user_columns: arrays shared by several rows, [U], [U, T] or [U, S, L]: in scoring frames the
            user-side arrays (profile, context, histories, sessions, length) once per user; in training
            frames the histories, negative histories, sessions and length once per positive event.
        user_keys: scoring frames only: user_id [U] and the raw (not encoded) histories [U, T] listed in
            `raw_histories`, zero-padded like the encoded ones.
        user_index: [N] row -> position in the `user_columns` arrays (None when there are none).
    """

    columns: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    user_columns: dict[str, np.ndarray] = field(default_factory=dict)
    user_keys: dict[str, np.ndarray] = field(default_factory=dict)
    user_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys["user_id"])

    def __getitem__(self, name: str) -> np.ndarray:
        """The full row-aligned array of one column ([N] or [N, T]), user-side columns gathered."""
        if name in self.columns:
            return self.columns[name]
        return self.user_columns[name][self.user_index]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns) + tuple(self.user_columns)

    def batch(self, rows: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The arrays of `rows` (int index [B]) keyed by column name; `names` limits the columns."""
        wanted = names or self.names
        out = {n: self.columns[n][rows] for n in wanted if n in self.columns}
        if self.user_columns:
            users = self.user_index[rows]
            out.update({n: self.user_columns[n][users] for n in wanted if n in self.user_columns})
        return out

    def take(self, rows: np.ndarray) -> Frame:
        """A frame of the selected rows (int index or boolean mask); user arrays are shared."""
        return Frame(columns={n: a[rows] for n, a in self.columns.items()},
                     keys={n: a[rows] for n, a in self.keys.items()},
                     user_columns=self.user_columns, user_keys=self.user_keys,
                     user_index=None if self.user_index is None else self.user_index[rows])


# --------------------------------------------------------------------------- SQL building


@dataclass
class _Sql:
    """Pieces of one encoding query over a CTE named `base` with a row id `rid`."""

    ctes: list[str] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    selects: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _sequence_cte(f: FeatureSpec) -> str:
    """Encode base.raw_<name> element by element, keeping the order (positions from generate_subscripts)."""
    return f"""seq_{f.name} AS (
        SELECT u.rid, list(coalesce(v.idx, {UNKNOWN}) ORDER BY u.pos) AS encoded
        FROM (SELECT rid, unnest(raw_{f.name}) AS val, generate_subscripts(raw_{f.name}, 1) AS pos
              FROM base) u
        LEFT JOIN features.vocab v ON v.feature_group = $g_{f.name} AND v.raw_value = CAST(u.val AS VARCHAR)
        GROUP BY u.rid)"""


def _session_cte(f: FeatureSpec) -> str:
    """Encode base.raw_<name> (list of sessions, each a list): unnest both levels with their positions,
    encode, pad every session to max_len and rebuild the sessions in order."""
    return f"""seq_{f.name} AS (
        SELECT s.rid, list(list_resize(s.encoded, {f.max_len}, 0) ORDER BY s.spos) AS encoded
        FROM (
            SELECT u.rid, u.spos, list(coalesce(v.idx, {UNKNOWN}) ORDER BY u.pos) AS encoded
            FROM (SELECT rid, spos, unnest(sess) AS val, generate_subscripts(sess, 1) AS pos
                  FROM (SELECT rid, unnest(raw_{f.name}) AS sess, generate_subscripts(raw_{f.name}, 1) AS spos
                        FROM base)) u
            LEFT JOIN features.vocab v ON v.feature_group = $g_{f.name} AND v.raw_value = CAST(u.val AS VARCHAR)
            GROUP BY u.rid, u.spos) s
        GROUP BY s.rid)"""


def _session_type(f: FeatureSpec) -> str:
    """DuckDB type of an encoded session feature: S arrays of L (`BIGINT[L][S]`)."""
    return f"BIGINT[{f.max_len}][{f.max_sessions}]"


def _empty_sessions(f: FeatureSpec) -> str:
    return f"list_resize([]::BIGINT[][], {f.max_sessions}, list_resize([]::BIGINT[], {f.max_len}, 0))"


def _encode(features: tuple[FeatureSpec, ...], available: set[str]) -> _Sql:
    """SQL that encodes `base.raw_<name>` for each feature; features not in `available` get their default.

    Names and groups come from the validated spec (plain identifiers); group names are bound anyway.
    """
    sql = _Sql()
    for f in features:
        if f.name not in available:
            if f.kind == "session":
                constant = f"CAST({_empty_sessions(f)} AS {_session_type(f)})"
            elif f.kind == "sequence":
                constant = f"CAST(list_resize([]::BIGINT[], {f.max_len}, 0) AS BIGINT[{f.max_len}])"
            else:
                constant = f"CAST({f.default} AS {_scalar_type(f)})"
            sql.selects.append(f"{constant} AS {f.name}")
        elif f.kind == "numeric":
            sql.selects.append(f"CAST(coalesce(CAST(base.raw_{f.name} AS DOUBLE), {f.default}) AS FLOAT) AS {f.name}")
        elif f.kind == "categorical":
            sql.params[f"g_{f.name}"] = f.group
            sql.joins.append(f"LEFT JOIN features.vocab v_{f.name} ON v_{f.name}.feature_group = $g_{f.name} "
                             f"AND v_{f.name}.raw_value = CAST(base.raw_{f.name} AS VARCHAR)")
            sql.selects.append(f"coalesce(v_{f.name}.idx, {int(f.default)}) AS {f.name}")
        elif f.kind == "session":
            sql.params[f"g_{f.name}"] = f.group
            sql.ctes.append(_session_cte(f))
            sql.joins.append(f"LEFT JOIN seq_{f.name} USING (rid)")
            sql.selects.append(f"CAST(list_resize(coalesce(seq_{f.name}.encoded, []), {f.max_sessions}, "
                               f"list_resize([]::BIGINT[], {f.max_len}, 0)) AS {_session_type(f)}) AS {f.name}")
        else:
            sql.params[f"g_{f.name}"] = f.group
            sql.ctes.append(_sequence_cte(f))
            sql.joins.append(f"LEFT JOIN seq_{f.name} USING (rid)")
            sql.selects.append(f"CAST(list_resize(coalesce(seq_{f.name}.encoded, []), {f.max_len}, 0) "
                               f"AS BIGINT[{f.max_len}]) AS {f.name}")
    return sql


def _scalar_type(f: FeatureSpec) -> str:
    return "FLOAT" if f.kind == "numeric" else "BIGINT"


def _raw_select(f: FeatureSpec, expr: str) -> str:
    """base column raw_<name>; sequences keep only their most recent max_len elements (oldest first),
    sessions their most recent max_sessions sessions of (each) the most recent max_len elements."""
    if f.kind == "sequence":
        return f"list_slice({expr}, -{f.max_len}, -1) AS raw_{f.name}"
    if f.kind == "session":
        return (f"list_transform(list_slice({expr}, -{f.max_sessions}, -1), "
                f"lambda s: list_slice(s, -{f.max_len}, -1)) AS raw_{f.name}")
    return f"{expr} AS raw_{f.name}"


def _length_select(spec: FeatureSpecs, available: set[str]) -> str:
    """History length = valid positions of the first history (all histories are aligned)."""
    sequences = [f for f in spec.of_kind("sequence") if f.name in available and f.role == "history"]
    if not sequences:
        return f"CAST(0 AS BIGINT) AS {spec.length}"
    return f"CAST(coalesce(len(base.raw_{sequences[0].name}), 0) AS BIGINT) AS {spec.length}"


def _query(base_sql: str, sql: _Sql, extra_selects: list[str]) -> str:
    ctes = ",\n".join([f"base AS ({base_sql})", *sql.ctes])
    selects = ",\n       ".join(extra_selects + sql.selects)
    return f"WITH {ctes}\nSELECT {selects}\nFROM base\n" + "\n".join(sql.joins) + "\nORDER BY base.rid"


# --------------------------------------------------------------------------- arrow -> numpy


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """One Arrow column as numpy: fixed-size lists become [N, T] (or nested ones [N, S, L]) by a reshape
    of the flat child buffer."""
    array = column.combine_chunks()
    shape = []
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    return values.reshape(-1, *shape) if shape else values


def _fetch(con: duckdb.DuckDBPyConnection, query: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    table = con.sql(query, params=params).to_arrow_table()
    return {name: _to_numpy(table.column(name)) for name in table.column_names}


def _split(arrays: dict[str, np.ndarray], prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(columns, keys): columns named `<prefix>...` are raw keys, the rest encoded features."""
    keys = {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}
    return {n: a for n, a in arrays.items() if not n.startswith(prefix)}, keys


# --------------------------------------------------------------------------- frames


def _check_sources(spec: FeatureSpecs, tables: tuple[str, ...]) -> None:
    wrong = [f.name for f in spec.features if f.source.table not in tables]
    if wrong:
        raise ValueError(f"training sources of {wrong} must all be columns of {' or '.join(tables)}")


def _history_rows(spec: FeatureSpecs, features: tuple[FeatureSpec, ...]) -> tuple[str, dict[str, Any]]:
    """One row per positive of [$ds_from, $ds_to] in marts.training_histories, ordered by (ds, event_id)."""
    raw = [_raw_select(f, f.source.column) for f in features]
    base = (f"SELECT row_number() OVER (ORDER BY ds, event_id) - 1 AS rid, {', '.join(raw)} "
            f"FROM {HISTORIES_TABLE} WHERE ds BETWEEN $ds_from AND $ds_to")
    available = {f.name for f in features}
    sql = _encode(features, available)
    return _query(base, sql, [_length_select(spec, available)]), sql.params


def _example_rows(spec: FeatureSpecs, features: tuple[FeatureSpec, ...],
                  shared: bool) -> tuple[str, dict[str, Any]]:
    """One row per example, ordered by (ds, example_id); with `shared`, `user_index` is the position of the
    example's positive in `_history_rows` (-1 when it has none), the same row_number() over the same keys."""
    raw = [_raw_select(f, f"e.{f.source.column}") for f in features]
    join, index = "", ""
    if shared:
        join = (f" LEFT JOIN (SELECT ds, event_id, row_number() OVER (ORDER BY ds, event_id) - 1 AS pos "
                f"FROM {HISTORIES_TABLE} WHERE ds BETWEEN $ds_from AND $ds_to) h "
                f"ON h.ds = e.ds AND h.event_id = e.event_id")
        index = ", coalesce(h.pos, -1) AS user_index"
    base = (f"SELECT row_number() OVER (ORDER BY e.ds, e.example_id, e.user_id, e.item_id) AS rid, "
            f"e.ds AS key_ds, e.user_id AS key_user_id, e.item_id AS key_item_id, "
            f"CAST(e.{spec.label} AS FLOAT) AS {spec.label}{index}{''.join(', ' + r for r in raw)} "
            f"FROM {TRAINING_TABLE} e{join} WHERE e.ds BETWEEN $ds_from AND $ds_to")
    available = {f.name for f in features}
    sql = _encode(features, available)
    extra = ["base.key_ds", "base.key_user_id", "base.key_item_id", f"base.{spec.label}"]
    extra += ["base.user_index"] if shared else [_length_select(spec, available)]
    return _query(base, sql, extra), sql.params


def training_frame(con: duckdb.DuckDBPyConnection, ds_from: str, ds_to: str, spec: FeatureSpecs,
                   served: bool = False) -> Frame:
    """Encoded training examples with ds in [ds_from, ds_to], ordered by (ds, example_id).

    `served=True` (what a model trains and is evaluated on) passes the frame through `as_served`; without
    it the frame holds the marts' real values.

    Features sourced from `marts.training_examples` are per example (`columns`, [N]); features sourced from
    `marts.training_histories` and the history length are per positive event (`user_columns`, [P, T] or
    [P, S, L]), gathered for each example through `user_index` [N] when a batch is built.
    """
    _check_sources(spec, (TRAINING_TABLE, HISTORIES_TABLE))
    require_vocab(con)
    params = {"ds_from": ds_from, "ds_to": ds_to}
    shared = tuple(f for f in spec.features if f.source.table == HISTORIES_TABLE)
    per_row = tuple(f for f in spec.features if f.source.table == TRAINING_TABLE)
    row_sql, row_params = _example_rows(spec, per_row, bool(shared))
    columns, keys = _split(_fetch(con, row_sql, {**row_params, **params}), "key_")
    if not shared:
        frame = Frame(columns=columns, keys=keys)
        return as_served(frame, spec) if served else frame
    user_index = columns.pop("user_index").astype(np.int64)
    if (user_index < 0).any():
        raise ValueError(f"{int((user_index < 0).sum())} rows of {TRAINING_TABLE} with ds in [{ds_from}, {ds_to}] "
                         f"have no row of {HISTORIES_TABLE} with their (ds, event_id); rerun `recsys transform`")
    history_sql, history_params = _history_rows(spec, shared)
    user_columns = _fetch(con, history_sql, {**history_params, **params})
    frame = Frame(columns=columns, keys=keys, user_columns=user_columns, user_index=user_index)
    return as_served(frame, spec) if served else frame


def as_served(frame: Frame, spec: FeatureSpecs) -> Frame:
    """`frame` with every feature the scorer cannot know (`scoring_source: null`: the hour and weekday of
    a future visit) set to its default, as scoring frames feed it.

    Trained (or evaluated for promotion) on the real values, a model would meet at scoring an embedding
    row (unknown = 1) that no training example ever reached: random vectors into the MLP for every
    candidate. On MovieLens that skew cost DIN about 0.04 NDCG@10 (bench/README.md). The marts keep the
    real values for other consumers.
    """
    for feature in spec.features:
        if feature.scoring_source is None:
            for columns in (frame.columns, frame.user_columns):
                if feature.name in columns:
                    columns[feature.name] = np.full_like(columns[feature.name], feature.default)
    return frame


def _user_side_query(spec: FeatureSpecs, user_features: tuple[FeatureSpec, ...],
                     raw_histories: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """One row per user with candidates on $ds, ordered by user_id; profile/history joined as of ds."""
    available = {f.name for f in user_features if f.scoring_source is not None}
    tables = sorted({f.scoring_source.table for f in user_features if f.name in available})
    aliases = {t: f"t{i}" for i, t in enumerate(tables)}
    joins = " ".join(f"LEFT JOIN {t} {a} ON {a}.user_id = u.user_id AND {a}.ds = $ds" for t, a in aliases.items())
    raw = [_raw_select(f, f"{aliases[f.scoring_source.table]}.{f.scoring_source.column}")
           for f in user_features if f.name in available]
    base = (f"SELECT row_number() OVER (ORDER BY u.user_id) - 1 AS rid, u.user_id AS key_user_id"
            f"{''.join(', ' + r for r in raw)} "
            f"FROM (SELECT DISTINCT user_id FROM {CANDIDATES_TABLE} WHERE ds = $ds) u {joins}")
    sql = _encode(user_features, available)
    extra = ["base.key_user_id", _length_select(spec, available)]
    for name in raw_histories:  # raw ids for explanations, NULL elements -> 0 (masked by the length anyway)
        width = spec[name].max_len
        extra.append(f"CAST(list_resize(list_transform(coalesce(base.raw_{name}, []), lambda x: coalesce(x, 0)), "
                     f"{width}, 0) AS BIGINT[{width}]) AS key_{name}")
    return _query(base, sql, extra), sql.params


def _candidate_query(row_features: tuple[FeatureSpec, ...]) -> tuple[str, dict[str, Any]]:
    """One row per (user, item) candidate of $ds (duplicates from several sources kept once)."""
    raw = [_raw_select(f, f"c.{f.scoring_source.column}") for f in row_features]
    base = (f"SELECT row_number() OVER (ORDER BY c.user_id, c.item_id) AS rid, c.ds AS key_ds, "
            f"c.user_id AS key_user_id, c.item_id AS key_item_id, c.candidate_source AS key_candidate_source, "
            f"dense_rank() OVER (ORDER BY c.user_id) - 1 AS user_index{''.join(', ' + r for r in raw)} "
            f"FROM {CANDIDATES_TABLE} c WHERE c.ds = $ds "
            f"QUALIFY row_number() OVER (PARTITION BY c.user_id, c.item_id ORDER BY c.candidate_source) = 1")
    sql = _encode(row_features, {f.name for f in row_features})
    extra = ["base.key_ds", "base.key_user_id", "base.key_item_id", "base.key_candidate_source", "base.user_index"]
    return _query(base, sql, extra), sql.params


def scoring_frame(con: duckdb.DuckDBPyConnection, ds: str, spec: FeatureSpecs,
                  raw_histories: tuple[str, ...] = ("item_id_history",)) -> Frame:
    """Candidates of ds with each user's profile and history as of the end of ds.

    Features read from `marts.scoring_candidates` are per row; every other feature (profile, history,
    context) is per user. Features without a scoring source get their default (context -> unknown).

    Args:
        raw_histories: sequence features whose raw values are kept in `user_keys` (for explanations).
    """
    require_vocab(con)
    row_features = tuple(f for f in spec.features if f.scoring_source and f.scoring_source.table == CANDIDATES_TABLE)
    user_features = tuple(f for f in spec.features if f not in row_features)
    raw_histories = tuple(n for n in raw_histories if n in {f.name for f in user_features if f.scoring_source})
    user_sql, user_params = _user_side_query(spec, user_features, raw_histories)
    users = _fetch(con, user_sql, {**user_params, "ds": ds})
    row_sql, row_params = _candidate_query(row_features)
    rows = _fetch(con, row_sql, {**row_params, "ds": ds})
    user_index = rows.pop("user_index").astype(np.int64)
    columns, keys = _split(rows, "key_")
    user_columns, user_keys = _split(users, "key_")
    return Frame(columns=columns, keys=keys, user_columns=user_columns, user_keys=user_keys, user_index=user_index)


def feature_map_dict(con: duckdb.DuckDBPyConnection, spec: FeatureSpecs) -> dict[str, Any]:
    """The feature map (JSON shape of `recsys.models.features.FeatureMap`) with today's vocabulary sizes."""
    return spec.to_feature_map_dict(vocab_sizes(con, spec))


def feature_map(con: duckdb.DuckDBPyConnection, spec: FeatureSpecs) -> FeatureMap:
    """`FeatureMap` for the spec with vocabulary sizes from `features.vocab`."""
    from recsys.models.features import FeatureMap  # torch loads only when a model is built

    return FeatureMap.from_dict(feature_map_dict(con, spec))


def clamp_to_vocab(batch: dict[str, np.ndarray], feature_map: dict[str, Any]) -> dict[str, np.ndarray]:
    """Map indices a model's (older, smaller) vocabulary does not have to unknown (1).

    Vocabularies are append-only, so an index below the model's vocabulary size means the same value
    it meant at training time; anything at or above it was added later and the model never saw it.

    Args:
        batch: encoded arrays keyed by feature name.
        feature_map: the model's feature map as a dict (`FeatureMap.to_dict()`).
    """
    sizes = feature_map["vocab_sizes"]
    out = dict(batch)
    for f in feature_map["features"]:
        name, group = f["name"], f.get("group")
        if name in out and group in sizes and f["kind"] in ("categorical", "sequence", "session"):
            out[name] = np.where(out[name] >= sizes[group], UNKNOWN, out[name])
    return out
