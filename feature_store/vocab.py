"""Append-only vocabularies in `features.vocab(feature_group, raw_value, idx)`.

Index 0 is padding and 1 is the unknown value; real values start at 2. A value keeps its index
forever: each update only appends the values not seen before, numbered max+1, max+2, ... in the
order of their text (so two runs over the same data give the same numbers). Because nothing is ever
renumbered, a model trained on an older, smaller vocabulary still reads today's encoded data
correctly once indices beyond its own vocabulary size are mapped to unknown (`clamp_to_vocab`).
"""

from __future__ import annotations

import logging

import duckdb

from feature_store.spec import FeatureSpecs, Source, load_spec
from recsys.warehouse import table_exists, transaction

log = logging.getLogger(__name__)

PADDING, UNKNOWN = 0, 1
VOCAB_TABLE = "features.vocab"
VOCAB_DDL = """
    CREATE TABLE IF NOT EXISTS features.vocab (
        feature_group VARCHAR NOT NULL, raw_value VARCHAR NOT NULL, idx BIGINT NOT NULL)"""

# New values of every group numbered after the group's current maximum (1 = unknown when the group
# is empty), in raw_value order; the ANTI JOIN makes the update append-only and idempotent.
ASSIGN_SQL = """
    INSERT INTO features.vocab
    WITH new_values AS (
        SELECT DISTINCT s.feature_group, s.raw_value FROM vocab_seen s
        ANTI JOIN features.vocab v USING (feature_group, raw_value)),
    current_max AS (SELECT feature_group, max(idx) AS max_idx FROM features.vocab GROUP BY feature_group)
    SELECT n.feature_group, n.raw_value,
           coalesce(m.max_idx, 1) + row_number() OVER (PARTITION BY n.feature_group ORDER BY n.raw_value)
    FROM new_values n LEFT JOIN current_max m USING (feature_group)"""


def ensure_vocab_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create `features.vocab` when missing (idempotent)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS features")
    con.execute(VOCAB_DDL)


def require_vocab(con: duckdb.DuckDBPyConnection) -> None:
    """Fail with the stage to run when no vocabulary exists yet (frames join against it)."""
    if not table_exists(con, VOCAB_TABLE):
        raise RuntimeError(f"{VOCAB_TABLE} does not exist yet; `recsys train --ds <date>` builds it")


def _sources(spec: FeatureSpecs) -> list[tuple[str, Source, int]]:
    """(group, source, list depth) for every place an encoded feature is read, training and scoring."""
    found = []
    for feature in spec.features:
        if not feature.encoded:
            continue
        for source in (feature.source, feature.scoring_source):
            if source is not None and (feature.group, source, feature.depth) not in found:
                found.append((feature.group, source, feature.depth))
    return found


def _stage_seen_values(con: duckdb.DuckDBPyConnection, ds_from: str, ds_to: str, spec: FeatureSpecs) -> None:
    """Temp table vocab_seen(feature_group, raw_value): every non-null value of the window."""
    con.execute("CREATE OR REPLACE TEMP TABLE vocab_seen (feature_group VARCHAR, raw_value VARCHAR)")
    for group, source, depth in _sources(spec):
        if not table_exists(con, source.table):
            log.info("vocab: %s does not exist yet; skipped", source.table)
            continue
        # table/column come from the validated spec (plain identifiers); dates and group are bound
        # sessions (list of lists) are flattened first; a column holds one depth only
        value = {0: source.column, 1: f"unnest({source.column})", 2: f"unnest(flatten({source.column}))"}[depth]
        con.execute(f"""
            INSERT INTO vocab_seen
            SELECT feature_group, raw_value FROM (
                SELECT ? AS feature_group, CAST({value} AS VARCHAR) AS raw_value
                FROM {source.table} WHERE ds BETWEEN ? AND ?)
            WHERE raw_value IS NOT NULL""", [group, ds_from, ds_to])


def update_vocab(con: duckdb.DuckDBPyConnection, ds_from: str, ds_to: str,
                 spec: FeatureSpecs | None = None) -> dict[str, int]:
    """Append the values the marts hold for ds in [ds_from, ds_to] to every group's vocabulary.

    Reads every source of every encoded feature in the spec (training and scoring tables, list
    elements included); tables that do not exist yet are skipped. Runs in one transaction.

    Returns:
        The number of new values per group (groups without new values are left out).
    """
    spec = spec or load_spec()
    ensure_vocab_table(con)
    with transaction(con):
        before = dict(con.execute(f"SELECT feature_group, count(*) FROM {VOCAB_TABLE} GROUP BY 1").fetchall())
        _stage_seen_values(con, ds_from, ds_to, spec)
        con.execute(ASSIGN_SQL)
        after = dict(con.execute(f"SELECT feature_group, count(*) FROM {VOCAB_TABLE} GROUP BY 1").fetchall())
    added = {g: n - before.get(g, 0) for g, n in after.items() if n > before.get(g, 0)}
    log.info("vocab %s..%s: new values %s", ds_from, ds_to, added or "none")
    return added


def vocab_sizes(con: duckdb.DuckDBPyConnection, spec: FeatureSpecs | None = None) -> dict[str, int]:
    """Embedding rows per group: the largest index + 1 (2 for a group with no values yet: padding, unknown)."""
    spec = spec or load_spec()
    rows = {}
    if table_exists(con, VOCAB_TABLE):  # a read-only connection cannot create it; empty means no values
        rows = dict(con.execute(f"SELECT feature_group, max(idx) FROM {VOCAB_TABLE} GROUP BY 1").fetchall())
    return {group: int(rows.get(group, UNKNOWN)) + 1 for group in spec.groups}
