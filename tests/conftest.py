"""Test-wide environment: nothing a test does touches the developer's var/ or Airflow home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
