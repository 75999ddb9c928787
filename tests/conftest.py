"""Test-wide environment: nothing a test does touches the developer's var/ or Airflow home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="recsys-tests-"))
# Set before anything imports airflow / mlflow / GX: they read these once.
os.environ["AIRFLOW_HOME"] = str(_SCRATCH / "airflow")
os.environ["RECSYS_HOME"] = str(_SCRATCH / "home")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"

# `make test` runs the suite on 2 workers (pytest-xdist, `--dist loadscope --no-loadscope-reorder`): a
# module is the unit of work, so module fixtures run once. The slowest units go first so that neither
# worker is left with a long one at the end (durations in docs/testing.md).
SLOW_FIRST = ("tests/integration/test_backfill.py", "tests/reliability/", "tests/integration/test_movielens.py",
              "tests/data/test_dbt.py", "tests/data/test_buckets.py")


def _slow_rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(SLOW_FIRST) if nodeid.startswith(prefix)), len(SLOW_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _slow_rank(item.nodeid))  # stable: the order within a unit is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Module scopes, except that `tests/reliability` is one unit: its modules share the session fixture
    `reference` (two days through the pipeline), which a second worker would build a second time."""
    from xdist.scheduler import LoadScopeScheduling

    class _Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/reliability" if nodeid.startswith("tests/reliability/") else super()._split_scope(nodeid)

    return _Scheduler(config, log)
