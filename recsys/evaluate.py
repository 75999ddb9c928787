"""Stage 7: measure the recommendations made for ds-1 against the behaviours of ds.

Conventions (also in the README): binary relevance (an item is relevant to a user when the user had any
behaviour with it on ds); precision@K = hits in the top K / K; recall@K = hits / |relevant|;
NDCG@K with a log2(rank + 1) discount and the ideal DCG over min(|relevant|, K) positions;
HitRate@K = share of users with at least one hit; MRR@K = mean of 1 / rank of the first hit (0 when
none). Users who received recommendations but had no behaviour on ds are counted in
`users_without_positives` and excluded from the averages. Coverage@K = distinct recommended items in
the top K / items known as of ds-1.

Alongside the published recommendations the same metrics are computed for a global-popularity
baseline (most events over the 7 days up to ds-1, excluding items the user already touched), so
every report says whether the model beats the obvious.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

from recsys.config import Config
from recsys.ingest import previous_ds, validate_ds
from recsys.warehouse import connect, replace_partition, transaction

log = logging.getLogger(__name__)

POPULARITY_SQL = """
    -- global popularity over the 7 days up to ds-1, minus what each user already touched
    WITH popular AS (
        SELECT item_id, count(*) AS events FROM raw.behaviors
        WHERE ds BETWEEN $prev::DATE - 6 AND $prev::DATE GROUP BY item_id
        ORDER BY events DESC, item_id LIMIT $pool),
    users AS (SELECT DISTINCT user_id FROM marts.recommendations WHERE ds = $prev),
    touched AS (
        SELECT DISTINCT b.user_id, b.item_id FROM raw.behaviors b JOIN users USING (user_id)
        WHERE b.ds <= $prev),
    ranked AS (
        SELECT u.user_id, p.item_id,
               row_number() OVER (PARTITION BY u.user_id ORDER BY p.events DESC, p.item_id) AS rank
        FROM users u CROSS JOIN popular p ANTI JOIN touched t ON t.user_id = u.user_id AND t.item_id = p.item_id)
    SELECT 'popularity' AS model, user_id, item_id, rank FROM ranked WHERE rank <= $kmax"""

METRICS_SQL = """
    WITH truth AS (SELECT DISTINCT user_id, item_id FROM raw.behaviors WHERE ds = $ds),
    users AS (SELECT DISTINCT model, user_id FROM eval_recs),
    relevant AS (
        SELECT u.model, u.user_id, count(t.item_id) AS n_rel
        FROM users u LEFT JOIN truth t USING (user_id) GROUP BY ALL),
    hits AS (SELECT r.model, r.user_id, r.rank FROM eval_recs r JOIN truth t USING (user_id, item_id)),
    per_user AS (
        -- one row per (model, K, user): hits, DCG and first hit rank within the top K
        SELECT r.model, k.k, r.user_id, r.n_rel,
               count(h.rank) FILTER (WHERE h.rank <= k.k) AS n_hits,
               coalesce(sum(1.0 / log2(h.rank + 1)) FILTER (WHERE h.rank <= k.k), 0) AS dcg,
               min(h.rank) FILTER (WHERE h.rank <= k.k) AS first_hit
        FROM relevant r CROSS JOIN (SELECT unnest($ks::INTEGER[]) AS k) k
        LEFT JOIN hits h ON h.model = r.model AND h.user_id = r.user_id
        GROUP BY ALL),
    scored AS (
        SELECT *, list_sum(list_transform(range(1, least(n_rel, k) + 1), lambda i: 1.0 / log2(i + 1))) AS idcg
        FROM per_user),
    coverage AS (
        SELECT r.model, k.k, count(DISTINCT r.item_id) AS n_items
        FROM eval_recs r CROSS JOIN (SELECT unnest($ks::INTEGER[]) AS k) k
        WHERE r.rank <= k.k GROUP BY ALL)
    -- rounded to 12 digits: parallel aggregation sums doubles in varying order, and a rerun must
    -- reproduce the table exactly
    SELECT $ds::DATE AS ds, s.model, s.k,
           round(avg(n_hits / s.k) FILTER (WHERE n_rel > 0), 12) AS precision,
           round(avg(n_hits / n_rel) FILTER (WHERE n_rel > 0), 12) AS recall,
           round(avg(dcg / idcg) FILTER (WHERE n_rel > 0), 12) AS ndcg,
           round(avg((n_hits > 0)::INTEGER) FILTER (WHERE n_rel > 0), 12) AS hit_rate,
           round(avg(coalesce(1.0 / first_hit, 0)) FILTER (WHERE n_rel > 0), 12) AS mrr,
           round(any_value(c.n_items) / $catalogue, 12) AS coverage,
           count(*) FILTER (WHERE n_rel > 0) AS users_evaluated,
           count(*) FILTER (WHERE n_rel = 0) AS users_without_positives
    FROM scored s LEFT JOIN coverage c ON c.model = s.model AND c.k = s.k
    GROUP BY s.model, s.k ORDER BY s.model, s.k"""


@dataclass
class EvaluationResult:
    ds: str
    rows: int
    metrics: list[dict]
    reason: str | None = None  # why nothing was measured, when nothing was


def _stage_recommendations(con: duckdb.DuckDBPyConnection, prev: str, kmax: int) -> None:
    """Temp table eval_recs(model, user_id, item_id, rank): the published top-K plus the baselines."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE eval_recs AS
        SELECT model_name || '@v' || model_version AS model, user_id, item_id, rank
        FROM marts.recommendations WHERE ds = ? AND rank <= ?""", [prev, kmax])
    con.execute(f"INSERT INTO eval_recs {POPULARITY_SQL}", {"prev": prev, "pool": kmax * 20, "kmax": kmax})


def evaluate(cfg: Config, ds: str) -> EvaluationResult:
    """Write `marts.ranking_metrics` for ds (replacing ds's rows) and return them."""
    ds = validate_ds(ds)
    prev = previous_ds(ds)
    ks = sorted(cfg.evaluate.ks)
    con = connect(cfg, read_only=False)
    try:
        n_recs = con.execute("SELECT count(*) FROM marts.recommendations WHERE ds = ?", [prev]).fetchone()[0]
        if n_recs == 0:
            with transaction(con):  # rerun after recommendations were removed leaves no stale metrics
                con.execute("DELETE FROM marts.ranking_metrics WHERE ds = ?", [ds])
            log.warning("evaluate ds=%s: no recommendations for %s; nothing to measure", ds, prev)
            return EvaluationResult(ds, 0, [], f"no recommendations were published for {prev}")
        _stage_recommendations(con, prev, max(ks))
        catalogue = con.execute("SELECT greatest(count(DISTINCT item_id), 1) FROM raw.behaviors WHERE ds <= ?",
                                [prev]).fetchone()[0]
        params = {"ds": ds, "ks": ks, "catalogue": float(catalogue)}
        with transaction(con):
            rows = replace_partition(con, "marts.ranking_metrics", ds, METRICS_SQL, params)
        metrics = con.execute("SELECT * FROM marts.ranking_metrics WHERE ds = ? ORDER BY model, k",
                              [ds]).df().to_dict("records")
    finally:
        con.close()
    log.info("evaluate ds=%s: %d metric rows", ds, rows)
    return EvaluationResult(ds, rows, metrics)
