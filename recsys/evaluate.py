"""Stage 7: measure the recommendations made for ds-1 against the behaviours of ds.

Conventions (also in the README): binary relevance (an item is relevant to a user when the user had any
behaviour with it on ds); precision@K = hits in the top K / K; recall@K = hits / |relevant|;
NDCG@K with a log2(rank + 1) discount and the ideal DCG over min(|relevant|, K) positions;
HitRate@K = share of users with at least one hit; MRR@K = mean of 1 / rank of the first hit (0 when
none). Users who received recommendations but had no behaviour on ds are counted in
`users_without_positives` and excluded from the averages. Coverage@K = distinct recommended items in
the top K / items known as of ds-1.

Alongside the published recommendations the same metrics, for the same users, are computed for
baselines, each evaluated exactly like the champion (a user a baseline has nothing for counts as 0 hits):
- `popularity`: most events over the 7 days up to ds-1, excluding items the user already touched;
- `covisitation`: the user's co-visitation candidates of ds-1 alone, in candidate order;
- `base@v<N>`: the Base model version trained for ds-1 (when the registry has one and it is not the
  published model), scoring the same candidates;
- `candidates`: the whole candidate list of ds-1 at K = candidates_per_user: its recall is candidate
  recall@C, the ceiling of any ranker on these candidates (retrieval loss vs ranking loss).
Every metric is also logged to MLflow (experiment `<prefix>/evaluation`, one run per ds, rerun reuses
it), and `<RECSYS_HOME>/reports/ranking_metrics.png` plots NDCG@10 and recall@20 per model over days.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from recsys.config import Config
from recsys.ingest import previous_ds, validate_ds
from recsys.warehouse import connect, replace_partition, table_exists, transaction

log = logging.getLogger(__name__)

POPULARITY_SQL = """
    -- global popularity over the 7 days up to ds-1, minus what each user already touched
    WITH popular AS (
        SELECT item_id, count(*) AS events FROM raw.behaviors
        WHERE ds BETWEEN $prev::DATE - 6 AND $prev::DATE GROUP BY item_id
        ORDER BY events DESC, item_id LIMIT $pool),
    users AS (SELECT user_id FROM eval_users),
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
    -- every model is judged on the same users: those who received published recommendations
    users AS (SELECT m.model, u.user_id FROM (SELECT DISTINCT model FROM eval_recs) m CROSS JOIN eval_users u),
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
        FROM relevant r JOIN eval_ks k ON k.model = r.model
        LEFT JOIN hits h ON h.model = r.model AND h.user_id = r.user_id
        GROUP BY ALL),
    scored AS (
        SELECT *, list_sum(list_transform(range(1, least(n_rel, k) + 1), lambda i: 1.0 / log2(i + 1))) AS idcg
        FROM per_user),
    coverage AS (
        SELECT r.model, k.k, count(DISTINCT r.item_id) AS n_items
        FROM eval_recs r JOIN eval_ks k ON k.model = r.model
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


COVISITATION_SQL = """
    -- the co-visitation candidates of ds-1 alone, in candidate order (by co-visit score)
    SELECT 'covisitation' AS model, c.user_id, c.item_id,
           row_number() OVER (PARTITION BY c.user_id ORDER BY {order}) AS rank
    FROM marts.scoring_candidates c SEMI JOIN eval_users u ON u.user_id = c.user_id
    WHERE c.ds = $prev AND c.candidate_source = 'covisitation'
    QUALIFY rank <= $kmax"""

CANDIDATES_SQL = """
    -- the whole candidate list of ds-1: its recall at K = C is candidate recall@C
    SELECT 'candidates' AS model, c.user_id, c.item_id,
           row_number() OVER (PARTITION BY c.user_id ORDER BY {order}) AS rank
    FROM marts.scoring_candidates c SEMI JOIN eval_users u ON u.user_id = c.user_id
    WHERE c.ds = $prev"""

CANDIDATES = "candidates"
BASE_MODEL = "base"
REPORT_FILE = "ranking_metrics.png"
PLOTTED = (("ndcg", 10), ("recall", 20))


@dataclass
class EvaluationResult:
    ds: str
    rows: int
    metrics: list[dict]
    reason: str | None = None  # why nothing was measured, when nothing was
    report: str | None = None  # the PNG of metrics over days, when written


def _candidate_order(con: duckdb.DuckDBPyConnection) -> str | None:
    """ORDER BY of candidates within a user (list position when the relation has it), or None without one."""
    if not table_exists(con, "marts.scoring_candidates"):
        return None
    columns = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                         "table_schema = 'marts' AND table_name = 'scoring_candidates'").fetchall()}
    return "c.candidate_rank, c.item_id" if "candidate_rank" in columns else "c.item_id"


def _stage_recommendations(con: duckdb.DuckDBPyConnection, prev: str, kmax: int) -> None:
    """Temp tables eval_users(user_id) and eval_recs(model, user_id, item_id, rank): the published top-K
    plus the popularity, co-visitation and whole-candidate-list baselines for the same users."""
    con.execute("CREATE OR REPLACE TEMP TABLE eval_users AS "
                "SELECT DISTINCT user_id FROM marts.recommendations WHERE ds = ?", [prev])
    con.execute("""
        CREATE OR REPLACE TEMP TABLE eval_recs AS
        SELECT model_name || '@v' || model_version AS model, user_id, item_id, rank
        FROM marts.recommendations WHERE ds = ? AND rank <= ?""", [prev, kmax])
    con.execute(f"INSERT INTO eval_recs {POPULARITY_SQL}", {"prev": prev, "pool": kmax * 20, "kmax": kmax})
    order = _candidate_order(con)
    if order is not None:
        con.execute(f"INSERT INTO eval_recs {COVISITATION_SQL.format(order=order)}", {"prev": prev, "kmax": kmax})
        con.execute(f"INSERT INTO eval_recs {CANDIDATES_SQL.format(order=order)}", {"prev": prev})


def _stage_ks(con: duckdb.DuckDBPyConnection, ks: list[int], candidates_k: int) -> None:
    """Temp table eval_ks(model, k): every model at every K, the candidate list at K = C only."""
    con.execute("CREATE OR REPLACE TEMP TABLE eval_ks AS "
                "SELECT m.model, k.k FROM (SELECT DISTINCT model FROM eval_recs WHERE model <> $c) m "
                "CROSS JOIN (SELECT unnest($ks::INTEGER[]) AS k) k "
                "UNION ALL SELECT $c, $ck WHERE EXISTS (SELECT 1 FROM eval_recs WHERE model = $c)",
                {"ks": ks, "c": CANDIDATES, "ck": candidates_k})


def _base_version(cfg: Config, prev: str, published: set[str]) -> str | None:
    """The newest Base version trained for prev, unless it is the published model itself."""
    from recsys import registry  # mlflow loads only when needed

    versions = [v for v in registry.find_versions(cfg, ds=prev, model_name=BASE_MODEL)
                if f"{BASE_MODEL}@v{v.version}" not in published]
    return str(versions[-1].version) if versions else None


def _stage_base(cfg: Config, con: duckdb.DuckDBPyConnection, prev: str, kmax: int) -> None:
    """Base-model baseline: the Base version trained for prev ranks prev's candidates (same code as scoring)."""
    published = {r[0] for r in con.execute("SELECT DISTINCT model FROM eval_recs").fetchall()}
    version = _base_version(cfg, prev, published)
    if version is None:
        log.info("evaluate: no Base model version for %s in the registry; no Base baseline", prev)
        return
    import torch

    from feature_store.retrieval import scoring_frame
    from feature_store.spec import load_spec
    from recsys.registry import load_version
    from recsys.score import check_feature_map, score_frame

    loaded = load_version(cfg, version)
    fmap = loaded.feature_map.to_dict()
    spec = load_spec(cfg.paths.feature_specs)
    from feature_store.retrieval import feature_map_dict

    check_feature_map(fmap, feature_map_dict(con, spec), version)
    frame = scoring_frame(con, prev, spec, raw_histories=())
    keep = np.isin(frame.user_index, np.flatnonzero(np.isin(frame.user_keys["user_id"], _eval_users(con))))
    scored = score_frame(loaded.model, frame.take(keep), fmap, torch.device("cpu"), kmax)
    rows = scored.rows
    table = pa.table({"model": [f"{BASE_MODEL}@v{version}"] * len(rows),
                      "user_id": frame.keys["user_id"][keep][rows], "item_id": frame.keys["item_id"][keep][rows],
                      "rank": scored.ranks.astype(np.int64)})
    con.register("base_recs", table)
    con.execute("INSERT INTO eval_recs SELECT model, user_id, item_id, rank FROM base_recs")
    con.unregister("base_recs")


def _eval_users(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    return np.array([r[0] for r in con.execute("SELECT user_id FROM eval_users").fetchall()], dtype=np.int64)


def evaluate(cfg: Config, ds: str) -> EvaluationResult:
    """Write `marts.ranking_metrics` for ds (replacing ds's rows), log them to MLflow, redraw the report."""
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
        _stage_base(cfg, con, prev, max(ks))
        _stage_ks(con, ks, cfg.features.candidates_per_user)
        catalogue = con.execute("SELECT greatest(count(DISTINCT item_id), 1) FROM raw.behaviors WHERE ds <= ?",
                                [prev]).fetchone()[0]
        params = {"ds": ds, "catalogue": float(catalogue)}
        with transaction(con):
            rows = replace_partition(con, "marts.ranking_metrics", ds, METRICS_SQL, params)
        metrics = con.execute("SELECT * FROM marts.ranking_metrics WHERE ds = ? ORDER BY model, k",
                              [ds]).df().to_dict("records")
        history = con.execute("SELECT ds, model, k, ndcg, recall FROM marts.ranking_metrics "
                              "ORDER BY ds, model").fetchall()
    finally:
        con.close()
    log_to_mlflow(cfg, ds, metrics)
    report = plot_metrics(history, Path(cfg.paths.home) / "reports" / REPORT_FILE)
    log.info("evaluate ds=%s: %d metric rows; report %s", ds, rows, report)
    return EvaluationResult(ds, rows, metrics, report=str(report) if report else None)


# --------------------------------------------------------------------------- MLflow and the report


def metric_key(model: str, name: str, k: int) -> str:
    """MLflow metric name, e.g. `din_v3.ndcg_at_10` (MLflow allows no '@')."""
    return f"{re.sub(r'[^0-9A-Za-z_.-]', '_', model)}.{name}_at_{k}"


METRIC_COLUMNS = ("precision", "recall", "ndcg", "hit_rate", "mrr", "coverage", "users_evaluated",
                  "users_without_positives")


def log_to_mlflow(cfg: Config, ds: str, metrics: list[dict]) -> str:
    """Log ds's metrics to one run of `<prefix>/evaluation` (a rerun of ds logs into the same run)."""
    import mlflow

    from recsys import registry

    client = registry.configure(cfg)
    experiment_id = registry.ensure_experiment(cfg, "evaluation")
    found = client.search_runs([experiment_id], filter_string=f"tags.ds = '{validate_ds(ds)}'", max_results=1)
    values = {metric_key(m["model"], c, int(m["k"])): float(m[c]) for m in metrics for c in METRIC_COLUMNS
              if m[c] is not None and not (isinstance(m[c], float) and np.isnan(m[c]))}
    run_id = found[0].info.run_id if found else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=f"evaluate-{ds}",
                          tags={"ds": ds, "stage": "evaluate"}) as run:
        mlflow.log_metrics(values)
        return run.info.run_id


def plot_metrics(history: list[tuple], path: Path) -> Path | None:
    """NDCG@10 and recall@20 per model over days as a PNG at `path` (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a scheduler worker
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(6 * len(PLOTTED), 4), squeeze=False)
    for ax, (name, k) in zip(axes[0], PLOTTED, strict=True):
        series: dict[str, list[tuple]] = {}
        for ds, model, kk, ndcg, recall in history:
            value = {"ndcg": ndcg, "recall": recall}[name]
            if kk == k and value is not None:
                series.setdefault(_family(model), []).append((ds, value))
        for model, points in sorted(series.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
        ax.set_title(f"{name}@{k}")
        ax.set_xlabel("ds")
        ax.tick_params(axis="x", rotation=45)
        if series:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _family(model: str) -> str:
    """Plot one line per model family (din, base, popularity, ...), not per version."""
    return model.split("@", 1)[0]
