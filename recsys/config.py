"""One config for every stage: frozen dataclasses loaded from YAML plus explicit overrides.

Nothing happens at import. `load_config()` reads `conf/recsys.yaml` (or `$RECSYS_CONFIG`), resolves
every path against one root (`$RECSYS_HOME`, else the file's `home` key relative to the file),
and applies dotted overrides such as `{"train.epochs": 1}`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "conf" / "recsys.yaml"


@dataclass(frozen=True)
class Paths:
    """Absolute locations of everything the pipeline reads or writes."""

    home: Path
    landing: Path
    warehouse: Path
    mlflow_db: Path
    mlflow_artifacts: Path
    airflow_home: Path
    dbt_target: Path
    checkpoints: Path
    dbt_project: Path = REPO_ROOT / "dbt_project"
    feature_specs: Path = REPO_ROOT / "feature_store" / "specs.yaml"


@dataclass(frozen=True)
class WarehouseConfig:
    """How the DuckDB warehouse is shared with readers (`recsys/warehouse.py`)."""

    # A writer that starts refreshes the read snapshot (a copy of the whole file, so its cost grows with the
    # history kept) only when the warehouse changed since and the snapshot is older than this: a nightly
    # run copies once, at its first stage, and readers see the state from before the run. 0 = at every
    # writer that starts after a change.
    snapshot_max_age_minutes: float = 60.0

    def __post_init__(self) -> None:
        if self.snapshot_max_age_minutes < 0:
            raise ValueError(f"warehouse.snapshot_max_age_minutes must be >= 0, got {self.snapshot_max_age_minutes}")


@dataclass(frozen=True)
class IngestConfig:
    max_reject_rate: float = 0.05
    # the business day: ds is the local date of `ts` (stored in UTC) in this IANA time zone
    day_timezone: str = "UTC"
    behaviors: tuple[str, ...] = ("view", "cart", "fav", "buy", "rating")


# the smallest value each integer feature setting accepts (0 is meaningful only where it says "none")
FEATURE_MINIMA = {
    "session_gap_minutes": 0,      # 0: every instant its own session
    "history_max_len": 1,
    "negatives_per_positive": 1,   # a training day needs both labels
    "dsin_max_sessions": 1,
    "dsin_session_len": 1,
    "candidates_per_user": 1,
    "candidate_window_days": 1,
    "covisitation_seeds": 0,       # 0: no co-visitation candidates
    "covisitation_neighbours": 0,
}


@dataclass(frozen=True)
class FeatureConfig:
    session_gap_minutes: int = 30
    history_max_len: int = 50
    negatives_per_positive: int = 4
    negative_seed: int = 2024
    popularity_negatives_per_positive: int = 0  # of negatives_per_positive, drawn by popularity^exponent
    popularity_exponent: float = 0.75     # weight of an item = its 30-day events ** exponent (word2vec's 0.75)
    dsin_max_sessions: int = 5            # DSIN: the most recent S sessions ...
    dsin_session_len: int = 10            # ... of at most L behaviours each
    candidates_per_user: int = 200
    candidate_window_days: int = 30
    covisitation_seeds: int = 3           # the user's most recent distinct items whose co-visits are candidates
    covisitation_neighbours: int = 10     # co-visited items kept per item
    candidates_include_touched: bool = False  # True: items the user already touched may be candidates

    def __post_init__(self) -> None:
        # fail at load time, not minutes later inside dbt (or with silently empty marts: a user_histories
        # row joins the user's session list, so dsin_max_sessions 0 would drop every user)
        for name, low in FEATURE_MINIMA.items():
            if getattr(self, name) < low:
                raise ValueError(f"features.{name} ({getattr(self, name)}) must be at least {low}")
        if not 0 <= self.popularity_negatives_per_positive <= self.negatives_per_positive:
            raise ValueError(f"features.popularity_negatives_per_positive ({self.popularity_negatives_per_positive}) "
                             f"must be between 0 and features.negatives_per_positive ({self.negatives_per_positive})")


@dataclass(frozen=True)
class ValidateConfig:
    # a ds's raw row count must lie within these multiples of the previous ds's count
    min_row_ratio: float = 0.2
    max_row_ratio: float = 5.0
    # a null rate (profile fields, catalogue attributes) may exceed the previous ds's by at most this
    max_null_rate_increase: float = 0.1


MODEL_NAMES = ("base", "din", "dien", "dsin")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "din"
    train_days: int = 7
    embed_dim: int = 16
    attention_hidden: tuple[int, ...] = (64, 32)
    mlp_hidden: tuple[int, ...] = (200, 80)
    batch_size: int = 256
    lr: float = 1e-3
    epochs: int = 2
    seed: int = 2024
    device: str = "auto"
    num_threads: int = 2
    l2_reg: float = 1e-5             # weight of the mini-batch aware L2 on embedding rows
    aux_loss_weight: float = 1.0     # DIEN's auxiliary loss weight (alpha in the paper)
    models: tuple[str, ...] = ("din", "base")  # enabled models: one train task each; the best one is promoted
    patience: int = 2                # early stopping: epochs without a better validation GAUC before stopping
    # per model, the model class's own keyword arguments (e.g. din: {activation: dice, batch_norm: true})
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the model names are spelled out here because importing recsys.models (torch) would make every
        # config load, DAG parsing included, slow; tests/unit/test_config.py keeps the two lists equal
        unknown = set(self.model_options) - set(MODEL_NAMES)
        if unknown:
            raise ValueError(f"train.model_options: unknown models {sorted(unknown)} (known: {', '.join(MODEL_NAMES)})")
        for name, options in self.model_options.items():
            if not isinstance(options or {}, dict):
                raise ValueError(f"train.model_options.{name} must be a mapping of keyword arguments, got {options!r}")

    def options_of(self, name: str) -> dict[str, Any]:
        """`model_options[name]` as keyword arguments for `recsys.models.build_model`."""
        return dict(self.model_options.get(name) or {})


@dataclass(frozen=True)
class PromoteConfig:
    metric: str = "gauc"
    margin: float = 0.0              # the challenger must beat the champion's metric by more than this


@dataclass(frozen=True)
class ScoreConfig:
    top_k: int = 50


@dataclass(frozen=True)
class EvaluateConfig:
    ks: tuple[int, ...] = (5, 10, 20, 50)


@dataclass(frozen=True)
class MlflowConfig:
    experiment_prefix: str = "recsys"
    registered_model: str = "recsys_ranker"
    tracking_uri: str | None = None  # default: sqlite:///<home>/mlflow/mlflow.db


@dataclass(frozen=True)
class AirflowConfig:
    """How the DAG `recsys_daily` is scheduled (read when the DAG file is parsed)."""

    schedule: str = "@daily"
    start_date: str = "2024-01-01"      # the first ds the DAG knows about (set it to your first landing day)
    catchup: bool = False               # true: unpausing runs every ds from start_date; false: only the latest
    end_date: str | None = None         # last ds to schedule (a finite historical data set); None = no end
    retries: int = 2
    retry_delay_seconds: int = 30       # first retry delay; doubles each retry (exponential backoff)
    max_retry_delay_seconds: int = 600
    pool: str = "recsys_duckdb"         # one slot: one DuckDB writer at a time


@dataclass(frozen=True)
class Config:
    """The whole pipeline configuration; pass it (not globals) to every stage."""

    paths: Paths
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    airflow: AirflowConfig = field(default_factory=AirflowConfig)

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: `mlflow.tracking_uri` (or `$RECSYS_MLFLOW_TRACKING_URI`), else the local SQLite store.

        Not `$MLFLOW_TRACKING_URI`: mlflow itself writes that variable, so reading it back would make a
        second config in the same process silently use the first one's store.
        """
        explicit = self.mlflow.tracking_uri or os.environ.get("RECSYS_MLFLOW_TRACKING_URI")
        return explicit or f"sqlite:///{self.paths.mlflow_db}"

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced, e.g. `{"train.epochs": 1}`."""
        return _apply_overrides(self, overrides)


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a frozen dataclass, turning YAML lists into tuples and rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**clean)


def _resolve_paths(raw: dict[str, Any], config_file: Path) -> Paths:
    env_home = os.environ.get("RECSYS_HOME")
    home = Path(env_home) if env_home else (config_file.parent / raw.get("home", "../var"))
    home = home.resolve()
    rel = raw.get("paths", {})
    defaults = {
        "landing": "landing",
        "warehouse": "warehouse/recsys.duckdb",
        "mlflow_db": "mlflow/mlflow.db",
        "mlflow_artifacts": "mlflow/artifacts",
        "airflow_home": "airflow",
        "dbt_target": "dbt/target",
        "checkpoints": "checkpoints",
    }
    unknown = set(rel) - set(defaults)
    if unknown:
        raise ValueError(f"unknown config keys for paths: {sorted(unknown)}")
    resolved = {k: home / rel.get(k, v) for k, v in defaults.items()}
    return Paths(home=home, **resolved)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the YAML config, resolve paths and apply dotted overrides.

    Args:
        path: YAML file; default `$RECSYS_CONFIG` or `conf/recsys.yaml` in the repository.
        overrides: dotted keys to replace, e.g. `{"features.history_max_len": 20}`.
    """
    config_file = Path(path or os.environ.get("RECSYS_CONFIG") or DEFAULT_CONFIG).resolve()
    raw = yaml.safe_load(config_file.read_text()) or {}
    sections = {
        "warehouse": WarehouseConfig,
        "ingest": IngestConfig,
        "features": FeatureConfig,
        "validate": ValidateConfig,
        "train": TrainConfig,
        "promote": PromoteConfig,
        "score": ScoreConfig,
        "evaluate": EvaluateConfig,
        "mlflow": MlflowConfig,
        "airflow": AirflowConfig,
    }
    unknown = set(raw) - set(sections) - {"home", "paths"}
    if unknown:
        raise ValueError(f"{config_file}: unknown top-level keys {sorted(unknown)}")
    built = {name: _build(cls, raw.get(name) or {}) for name, cls in sections.items()}
    cfg = Config(paths=_resolve_paths(raw, config_file), **built)
    return cfg.with_overrides(overrides or {})


def _apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Replace dotted keys, one `replace` per section.

    Grouping matters: a section validates across its fields in `__post_init__`, so lowering
    `negatives_per_positive` together with `popularity_negatives_per_positive` must be checked as
    one change, not as two steps of which the first is invalid.
    """
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name or not hasattr(cfg, section):
            raise ValueError(f"override {key!r} must look like 'section.name'")
        if name not in {f.name for f in dataclasses.fields(getattr(cfg, section))}:
            raise ValueError(f"unknown config key {key!r}")
        by_section.setdefault(section, {})[name] = tuple(value) if isinstance(value, list) else value
    for section, changes in by_section.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    return cfg
