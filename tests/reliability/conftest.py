"""The reference run shared by the crash, idempotency and concurrency tests (built once per session)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.config import Config
from recsys.pipeline import run_day
from tests.reliability.helpers import DAY1, DAY2, Digest, add_contradicting_snapshot, config_for, digest, synth_landing

CHANGED_USER = 1  # day 2's snapshot contradicts day 1's about this user


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run of DAY1 then DAY2; saved copies of the whole home after each day.

    Tests restore a copy into `home` (the same path: MLflow keeps absolute artifact locations).
    """

    home: Path
    after_day1: Path
    after_day2: Path
    day1: Digest
    day2: Digest
    versions_day2: int

    @property
    def cfg(self) -> Config:
        return config_for(self.home)


def model_versions(cfg: Config) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    return len(client.search_model_versions(f"name = '{cfg.mlflow.registered_model}'"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    home = root / "home"
    cfg = config_for(home)
    synth_landing(cfg)
    add_contradicting_snapshot(cfg, CHANGED_USER)
    run_day(cfg, DAY1)
    day1 = digest(cfg.paths.warehouse)
    shutil.copytree(home, root / "after_day1", symlinks=True)
    run_day(cfg, DAY2)
    shutil.copytree(home, root / "after_day2", symlinks=True)
    return Reference(home, root / "after_day1", root / "after_day2", day1, digest(cfg.paths.warehouse),
                     model_versions(cfg))
