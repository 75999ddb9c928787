"""Stage 5: the promotion gate. The challenger takes the `champion` alias only if it is better on ds.

All models are scored on the SAME frozen frame: the training examples of ds, encoded with today's
vocabulary and fed to each model through its own feature map (indices a model's older vocabulary
does not have become unknown, which is exact because vocabularies are append-only). The alias
moves when challenger metric - champion metric > `promote.margin` (metric `promote.metric`: gauc,
impression-weighted, or auc). The first registered model becomes champion without a contest.

Challengers: the newest version of every model trained for ds (tag `ds`; several when several models
are enabled in `train.models`); the one with the best metric on the frame is THE challenger that
faces the champion. Every candidate's value is logged in the promotion run.

Each decision is recorded twice: as tags on the challenger's model version (`promotion_ds`,
`promotion_decision`, `promotion_metric`, `promotion_challenger_value`, `promotion_champion_version`,
`promotion_champion_value`) and as a small run in the experiment `<prefix>/promotion` (params:
ds, versions, decision; metrics: `challenger_<metric>`, `champion_<metric>`), which gives a timeline
of all decisions in the MLflow UI.

Caveat: a model trained on the first day of data (80/20 user split of ds) has seen 80 % of ds's
users; promotion on that same ds favours it. It only matters when a champion already exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import mlflow

from feature_store.retrieval import Frame, training_frame
from feature_store.spec import load_spec
from recsys import registry
from recsys.config import Config
from recsys.ingest import validate_ds
from recsys.train import evaluate_frame, resolve_device
from recsys.warehouse import connect, transaction

log = logging.getLogger(__name__)

METRICS = ("gauc", "auc")  # higher is better for both


@dataclass(frozen=True)
class PromotionResult:
    decision: str  # first_champion | promoted | kept | already_champion
    challenger_version: str
    champion_version: str | None  # the champion before this decision
    challenger_metric: float
    champion_metric: float | None
    metric_name: str
    candidates: dict[str, float] = field(default_factory=dict)  # every challenger of ds: version -> metric


def _evaluation_frame(cfg: Config, ds: str) -> Frame:
    con = connect(cfg, read_only=True)
    try:
        frame = training_frame(con, ds, ds, load_spec(cfg.paths.feature_specs), served=True)
    finally:
        con.close()
    if len(frame) == 0:
        raise ValueError(f"no training examples for ds={ds}; promotion needs ds's labelled examples")
    return frame


def _metric_of(cfg: Config, version: str, frame: Frame, metric: str) -> float:
    loaded = registry.load_version(cfg, version)
    device = resolve_device(cfg)
    scores = evaluate_frame(loaded.model.to(device), frame, loaded.feature_map.to_dict(), device)
    log.info("promote: version %s (%s) on the eval frame: %s", version, loaded.model_name, scores)
    return scores[metric]


def best_challenger(values: dict[str, float]) -> str:
    """The version with the highest metric; NaN ranks last, ties go to the newest version."""
    return max(values, key=lambda v: (not math.isnan(values[v]), values[v] if not math.isnan(values[v]) else 0.0,
                                      int(v)))


def _decide(cfg: Config, challenger: str, known: dict[str, float], champion: str | None, frame: Frame,
            metric: str) -> tuple[str, float | None]:
    """(decision, champion value); `known` holds the values already computed (the challengers')."""
    if champion is None:
        return "first_champion", None
    if champion == challenger:
        return "already_champion", known[challenger]
    champion_value = known[champion] if champion in known else _metric_of(cfg, champion, frame, metric)
    # NaN (e.g. no user with both labels) never wins: the comparison is False
    wins = known[challenger] - champion_value > cfg.promote.margin
    return ("promoted" if wins else "kept"), champion_value


def _record(cfg: Config, ds: str, result: PromotionResult) -> None:
    """Version tags on the challenger plus one run in `<prefix>/promotion`."""
    registry.set_version_tags(cfg, result.challenger_version, {
        "promotion_ds": ds, "promotion_decision": result.decision, "promotion_metric": result.metric_name,
        "promotion_challenger_value": result.challenger_metric,
        "promotion_champion_version": result.champion_version or "none",
        "promotion_champion_value": "none" if result.champion_metric is None else result.champion_metric})
    experiment_id = registry.ensure_experiment(cfg, "promotion")
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"promote-{ds}", tags={"ds": ds}):
        mlflow.log_params({"ds": ds, "challenger_version": result.challenger_version,
                           "champion_version": result.champion_version or "none", "decision": result.decision,
                           "metric": result.metric_name, "margin": cfg.promote.margin,
                           "candidates": ",".join(sorted(result.candidates, key=int))})
        values = {f"challenger_{result.metric_name}": result.challenger_metric}
        values.update({f"candidate_v{v}_{result.metric_name}": x for v, x in result.candidates.items()})
        if result.champion_metric is not None:
            values[f"champion_{result.metric_name}"] = result.champion_metric
        mlflow.log_metrics({k: v for k, v in values.items() if not math.isnan(v)})


def challengers(cfg: Config, ds: str, version: str | None = None) -> list[str]:
    """The given version, else the newest version of each model trained for ds (oldest version first)."""
    if version is not None:
        return [str(version)]
    trained = registry.find_versions(cfg, ds=ds)
    if not trained:
        raise RuntimeError(f"no version of {cfg.mlflow.registered_model!r} was trained for ds={ds}; "
                           f"run `recsys train --ds {ds}` first")
    newest = {v.tags.get("model_name", "?"): str(v.version) for v in trained}  # oldest first: the last one wins
    return sorted(newest.values(), key=int)


def _champion_before(cfg: Config, ds: str, challenger: str) -> str | None:
    """The champion the challenger must beat, read from the promotion log rather than the live alias.

    - a rerun of ds with the same challenger faces the same champion as the first run did, even after
      later days have moved the alias on (idempotent by ds);
    - a new challenger for an already decided ds faces the model that won ds;
    - otherwise the champion that served the latest earlier day; the alias only for a registry that
      predates the log.
    """
    con = connect(cfg, read_only=True)
    try:
        rows = con.execute(
            "SELECT ds = ?::DATE, challenger_version, champion_before, champion_after FROM marts.model_promotions "
            "WHERE registered_model = ? AND ds <= ? ORDER BY ds DESC", [ds, cfg.mlflow.registered_model, ds]
        ).fetchall()
        any_rows = con.execute("SELECT count(*) FROM marts.model_promotions WHERE registered_model = ?",
                               [cfg.mlflow.registered_model]).fetchall()[0][0]
    finally:
        con.close()
    if rows and rows[0][0]:  # ds was decided before
        same_challenger = rows[0][1] == challenger
        return rows[0][2] if same_challenger else rows[0][3]
    if rows:
        return rows[0][3]
    return registry.champion_version(cfg) if not any_rows else None


def _log_decision(cfg: Config, ds: str, result: PromotionResult, champion_after: str) -> bool:
    """Write the decision row for ds; returns True when ds is the newest decision (the alias follows it)."""
    con = connect(cfg, read_only=False)
    try:
        with transaction(con):
            con.execute("DELETE FROM marts.model_promotions WHERE ds = ? AND registered_model = ?",
                        [ds, cfg.mlflow.registered_model])
            con.execute("INSERT INTO marts.model_promotions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [ds, cfg.mlflow.registered_model, result.challenger_version, result.champion_version,
                         champion_after, result.decision, result.metric_name,
                         _finite(result.challenger_metric), _finite(result.champion_metric)])
        newest = con.execute("SELECT max(ds) = ?::DATE FROM marts.model_promotions WHERE registered_model = ?",
                             [ds, cfg.mlflow.registered_model]).fetchall()[0][0]
    finally:
        con.close()
    return bool(newest)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def promote(cfg: Config, ds: str, version: str | None = None) -> PromotionResult:
    """Compare ds's best challenger with the champion that served ds-1, on ds's examples.

    The decision goes to `marts.model_promotions` (scoring of ds uses its `champion_after`); the
    `champion` alias moves to the winner when ds is the newest decided day.
    """
    ds = validate_ds(ds)
    metric = cfg.promote.metric
    if metric not in METRICS:
        raise ValueError(f"promote.metric must be one of {METRICS}, got {metric!r}")
    frame = _evaluation_frame(cfg, ds)
    candidates = {v: _metric_of(cfg, v, frame, metric) for v in challengers(cfg, ds, version)}
    challenger = best_challenger(candidates)
    champion = _champion_before(cfg, ds, challenger)
    decision, champion_value = _decide(cfg, challenger, candidates, champion, frame, metric)
    after = challenger if decision in ("first_champion", "promoted") else str(champion)
    result = PromotionResult(decision, challenger, champion, candidates[challenger], champion_value, metric,
                             candidates)
    if _log_decision(cfg, ds, result, after) and registry.champion_version(cfg) != after:
        registry.set_champion(cfg, after)
    _record(cfg, ds, result)
    log.info("promote ds=%s: %s", ds, result)
    return result
