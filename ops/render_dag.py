"""Draw the task graph of `recsys_daily` into docs/img/dag.png with matplotlib (no graphviz needed).

    python ops/render_dag.py [--out docs/img/dag.png]

`airflow dags show recsys_daily --save dag.png` does the same where graphviz (`dot`) is installed; this
draws the parsed DAG object itself: tasks left to right by depth, the pool and retries in the title.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"ingest": "#cfe2f3", "transform": "#d9ead3", "validate": "#fff2cc", "train": "#f4cccc",
           "promote": "#ead1dc", "score": "#d0e0e3", "evaluate": "#fce5cd"}


def load_dag():
    """Parse dags/ with a throwaway AIRFLOW_HOME unless one is set."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="render-dag-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    sys.path.insert(0, str(REPO))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise SystemExit(f"the DAG does not import: {bag.import_errors}")
    return bag.dags["recsys_daily"]


def layout(dag) -> dict[str, tuple[float, float]]:
    """x = longest path from a root, y = spread of the tasks sharing that x."""
    depth: dict[str, int] = {}
    order = _topological(dag)
    for task_id in order:
        ups = dag.get_task(task_id).upstream_task_ids
        depth[task_id] = 1 + max((depth[u] for u in ups), default=-1)
    columns: dict[int, list[str]] = {}
    for task_id in order:
        columns.setdefault(depth[task_id], []).append(task_id)
    pos = {}
    for x, ids in columns.items():
        for i, task_id in enumerate(ids):  # in DAG order: train.<model> as in train.models
            pos[task_id] = (float(x), (len(ids) - 1) / 2 - i)
    return pos


def _topological(dag) -> list[str]:
    done: list[str] = []
    pending = set(dag.task_ids)
    while pending:
        ready = sorted(t for t in pending if dag.get_task(t).upstream_task_ids <= set(done))
        done.extend(ready)
        pending -= set(ready)
    return done


def draw(dag, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    pos = layout(dag)
    width = max(x for x, _ in pos.values()) + 1
    height = max(1.0, max(abs(y) for _, y in pos.values()) * 2 + 1)
    fig, ax = plt.subplots(figsize=(1.7 * width + 1, 1.1 * height + 1.2))
    for task_id, (x, y) in pos.items():
        for down in dag.get_task(task_id).downstream_task_ids:
            x2, y2 = pos[down]
            ax.annotate("", xy=(x2 - 0.42, y2), xytext=(x + 0.42, y),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 1.2})
    for task_id, (x, y) in pos.items():
        task = dag.get_task(task_id)
        stage = task_id.split(".")[0]
        ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.22), 0.84, 0.44, boxstyle="round,pad=0.02",
                                    facecolor=COLOURS.get(stage, "#eeeeee"), edgecolor="#333333"))
        outlets = len(task.outlets)
        label = task_id + (f"\n{outlets} asset{'s' if outlets != 1 else ''}" if outlets else "")
        ax.text(x, y, label, ha="center", va="center", fontsize=9)
    first = dag.tasks[0]
    schedule = getattr(dag.timetable, "expression", None) or getattr(dag.timetable, "_expression", "?")
    ax.set_title(f"{dag.dag_id}: cron '{schedule}' (data intervals), max_active_runs={dag.max_active_runs}; "
                 f"every task in pool '{first.pool}', retries={first.retries} "
                 f"(backoff x{first.retry_exponential_backoff:g})", fontsize=9)
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-height / 2, height / 2)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dag.png")
    args = parser.parse_args()
    draw(load_dag(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
