"""Pictures and text for the README's tour, from a finished run (`make demo`, `recsys run`, `make backfill`).

    RECSYS_HOME=var python ops/render_tour.py [--img docs/img]

Writes, from the warehouse and the MLflow store of that run:
- `metrics.png`: ranking metrics @K per model for the last evaluated ds, and NDCG@10 per ds;
- `training_curve.png`: the champion run's own MLflow artifact `plots/training_curve.png` (copied);
and prints the SQL sample of `marts.recommendations` and the MLflow runs as text (for the README).
Reads only: the warehouse through `warehouse.reader`, MLflow through its client.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SQL = """SELECT user_id, rank, item_id, round(score, 3) AS score, model_version, explanation
FROM marts.recommendations
WHERE ds = (SELECT max(ds) FROM marts.recommendations) AND user_id = (
  SELECT min(user_id) FROM marts.recommendations WHERE ds = (SELECT max(ds) FROM marts.recommendations))
ORDER BY rank LIMIT 5"""


def metrics_frame(cfg):
    from recsys.warehouse import reader

    with reader(cfg) as (con, _):
        return con.execute("SELECT ds, model, k, precision, recall, ndcg, hit_rate FROM marts.ranking_metrics "
                           "ORDER BY ds, model, k").df()


def plot_metrics(df, out: Path) -> None:
    """Left: recall / NDCG / HitRate @10 per model on the last evaluated ds. Right: NDCG@10 per ds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    at10 = df[df.k == 10].assign(ds=lambda d: d.ds.astype(str).str[:10])
    if at10.empty:
        raise SystemExit("marts.ranking_metrics has no @10 rows: run at least two consecutive days first")
    last_ds = at10.ds.max()
    last = at10[at10.ds == last_ds].sort_values("ndcg")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    y = np.arange(len(last))
    for offset, (column, label) in zip((-0.27, 0.0, 0.27), (("recall", "recall@10"), ("ndcg", "NDCG@10"),
                                                             ("hit_rate", "HitRate@10")), strict=True):
        left.barh(y + offset, last[column], height=0.26, label=label)
    left.set_yticks(y, last.model)
    left.set(xlabel="metric @10", title=f"@10 on ds={last_ds} (lists made the day before)")
    left.legend(fontsize=8, loc="lower right")
    for family, rows in at10.assign(family=at10.model.str.split("@").str[0]).groupby("family"):
        right.plot(rows.ds, rows.ndcg, marker="o", label=family)
    right.set(xlabel="ds", ylabel="NDCG@10", title="NDCG@10 per day, models vs baselines")
    right.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def sample_recommendations(cfg) -> str:
    from recsys.warehouse import reader

    with reader(cfg) as (con, _):
        cur = con.execute(SAMPLE_SQL)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    widths = [max(len(str(x)) for x in [n, *(r[i] for r in rows)]) for i, n in enumerate(names)]
    line = " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    body = [" | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def mlflow_runs(cfg) -> tuple[str, Path | None]:
    """The runs of every recsys experiment as text, and the champion's training-curve artifact."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, order_by=["start_time ASC"])
    keep = [c for c in ("tags.mlflow.runName", "tags.ds", "metrics.val_gauc", "metrics.val_auc",
                        "metrics.val_logloss", "metrics.challenger_gauc", "metrics.champion_gauc")
            if c in runs.columns]
    table = runs[keep].rename(columns=lambda c: c.split(".", 1)[1])
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
    champ = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    head = (f"registered model {cfg.mlflow.registered_model}: @champion = v{champ.version} "
            f"({champ.tags.get('model_name')}, ds {champ.tags.get('ds')}, run {champ.run_id[:8]})")
    curve = None
    try:
        curve = Path(client.download_artifacts(champ.run_id, "plots/training_curve.png"))
    except Exception:  # a model without that artifact: the tour simply has no curve
        curve = None
    return head + "\n" + text, curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from recsys.config import load_config

    cfg = load_config()
    plot_metrics(metrics_frame(cfg), args.img / "metrics.png")
    print(f"wrote {args.img / 'metrics.png'}\n")
    print(f"$ recsys sql \"{' '.join(SAMPLE_SQL.split())}\"\n{sample_recommendations(cfg)}\n")
    text, curve = mlflow_runs(cfg)
    print(f"MLflow runs (mlflow.search_runs):\n{text}\n")
    if curve and curve.exists():
        shutil.copyfile(curve, args.img / "training_curve.png")
        print(f"wrote {args.img / 'training_curve.png'} (the champion run's MLflow artifact)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
