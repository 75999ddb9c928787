"""MLflow helpers: experiments, logging and registering models, the `champion` alias, safe loading.

Layout of one trained model:
- run artifacts `model_files/`: `state_dict.pt` (tensors only), `model_config.json` (model name and
  hyper-parameters), `feature_map.json`. Scoring and promotion rebuild the module with
  `recsys.models.build_model` and load the weights with `torch.load(weights_only=True)`, so loading
  a model never unpickles code from the artifact store.
- a pyfunc model `model` (the same three files as pyfunc artifacts, `RankerPyfunc` as the wrapper)
  so the MLflow UI shows a proper model with a signature and `mlflow.pyfunc.load_model` works for ad
  hoc use. That pyfunc is the registered model version of `cfg.mlflow.registered_model`; its run is
  where the loaders find `model_files/`.

Versions carry the tags `ds`, `git_sha`, `dbt_manifest_sha` and `model_name`; the production model is
the version with alias `champion` (aliases, not the deprecated stages).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from recsys.config import REPO_ROOT, Config
from recsys.models import build_model
from recsys.models.features import FeatureMap

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
ARTIFACT_DIR = "model_files"
PYFUNC_NAME = "model"
WEIGHTS, MODEL_CONFIG, FEATURE_MAP = "state_dict.pt", "model_config.json", "feature_map.json"
class NoChampionError(RuntimeError):
    """No model version carries the `champion` alias yet."""


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version rebuilt for inference (module in eval mode, on CPU)."""

    model: torch.nn.Module
    feature_map: FeatureMap
    version: str
    run_id: str
    model_name: str


# --------------------------------------------------------------------------- tracking setup


def configure(cfg: Config) -> MlflowClient:
    """Point MLflow (tracking and registry) at cfg.tracking_uri and return a client for it."""
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(cfg.paths.mlflow_db).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(cfg: Config, name: str) -> str:
    return f"{cfg.mlflow.experiment_prefix}/{name}"


def is_local_store(tracking_uri: str) -> bool:
    """True for a tracking store on this machine (sqlite:///..., file:..., a plain path)."""
    if "://" not in tracking_uri:  # a bare path is a local file store; "databricks" is not a path
        return "/" in tracking_uri or tracking_uri.startswith((".", "~"))
    return tracking_uri.split("://", 1)[0].lower() in ("file", "sqlite")


def ensure_experiment(cfg: Config, name: str) -> str:
    """The id of experiment `<prefix>/<name>`.

    With a local store (sqlite/file URI) its artifacts go under cfg.paths.mlflow_artifacts; with a
    tracking server (http/https/databricks) the server chooses (it serves or proxies the artifacts,
    and a path on this machine would mean nothing to the other clients).
    """
    client = configure(cfg)
    full_name = experiment_name(cfg, name)
    found = client.get_experiment_by_name(full_name)
    if found is not None:
        return found.experiment_id
    if not is_local_store(cfg.tracking_uri):
        return client.create_experiment(full_name)
    location = Path(cfg.paths.mlflow_artifacts) / cfg.mlflow.experiment_prefix / name
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(full_name, artifact_location=location.resolve().as_uri())


def git_sha() -> str:
    """HEAD of the repository the code runs from, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def dbt_manifest_sha(cfg: Config) -> str:
    """Fingerprint of the dbt code of the last `dbt build` (which marts code made the data), or "unknown".

    The checksums of the manifest's nodes and macros, not the file's bytes: the file also holds a
    timestamp and an invocation id, so its raw hash would change on every run.
    """
    from recsys.transform import project_fingerprint

    manifest = Path(cfg.paths.dbt_target) / "manifest.json"
    return project_fingerprint(manifest) if manifest.is_file() else "unknown"


# --------------------------------------------------------------------------- pyfunc wrapper


def _rebuild(files: dict[str, str | Path]) -> tuple[torch.nn.Module, FeatureMap, dict[str, Any]]:
    """Module, feature map and model config from the three files; weights read with weights_only=True."""
    config = json.loads(Path(files["model_config"]).read_text())
    feature_map = FeatureMap.from_dict(json.loads(Path(files["feature_map"]).read_text()))
    model = build_model(config["model_name"], feature_map, embed_dim=config["embed_dim"],
                        attention_hidden=tuple(config["attention_hidden"]), mlp_hidden=tuple(config["mlp_hidden"]),
                        **config.get("options", {}))
    state = torch.load(files["state_dict"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, feature_map, config


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: input = dict of encoded arrays keyed by feature name (the batch layout),
    output = click probabilities [B] (float32)."""

    def load_context(self, context: Any) -> None:
        self.model, self.feature_map, _ = _rebuild(context.artifacts)

    # model_input is deliberately unannotated: MLflow would derive a list-of-rows schema from a type hint
    # and replace the tensor signature logged with the model (it warns once about the missing hint)
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        if hasattr(model_input, "columns"):  # a DataFrame from a REST/JSON request: one list per cell
            model_input = {c: np.stack(model_input[c].to_numpy()) if model_input[c].dtype == object
                           else model_input[c].to_numpy() for c in model_input.columns}
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
        with torch.inference_mode():
            return torch.sigmoid(self.model(batch).logits.float()).numpy()


# --------------------------------------------------------------------------- logging and registering


def model_config(model_name: str, embed_dim: int, attention_hidden: tuple[int, ...],
                 mlp_hidden: tuple[int, ...], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON that `build_model` needs besides the feature map (`options`: the model's own keywords)."""
    return {"model_name": model_name, "embed_dim": embed_dim, "attention_hidden": list(attention_hidden),
            "mlp_hidden": list(mlp_hidden), "options": dict(options or {})}


def _pip_requirements() -> list[str]:
    # the local build tag (+cpu / +cu12x) is not installable from PyPI; the release number is what matters
    return [f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"]


def log_and_register(cfg: Config, model: torch.nn.Module, config: dict[str, Any], feature_map: dict[str, Any],
                     example: dict[str, np.ndarray], tags: dict[str, str]) -> ModelVersion:
    """Inside the active run: log the model files and the pyfunc, register a new version with `tags`.

    Args:
        config: `model_config(...)`.
        feature_map: the feature map as a dict (`FeatureMap.to_dict()`).
        example: a few rows of a batch (numpy, keyed by feature name) to infer the signature from.
        tags: version tags, e.g. ds, git_sha, dbt_manifest_sha, model_name.
    """
    client = configure(cfg)
    with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
        files = {"state_dict": Path(tmp) / WEIGHTS, "model_config": Path(tmp) / MODEL_CONFIG,
                 "feature_map": Path(tmp) / FEATURE_MAP}
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, files["state_dict"])
        files["model_config"].write_text(json.dumps(config, indent=2))
        files["feature_map"].write_text(json.dumps(feature_map, indent=2))
        mlflow.log_artifacts(tmp, artifact_path=ARTIFACT_DIR)
        # rebuild from the files just written (weights_only) before logging: a model that cannot be
        # loaded back fails here, not at scoring time; its predictions give the output schema
        wrapper = RankerPyfunc()
        wrapper.load_context(SimpleNamespace(artifacts=files))
        signature = infer_signature(example, wrapper.predict(None, example))
        info = mlflow.pyfunc.log_model(name=PYFUNC_NAME, python_model=RankerPyfunc(),
                                       artifacts={k: str(v) for k, v in files.items()},
                                       pip_requirements=_pip_requirements(), signature=signature,
                                       input_example=example)
    version = mlflow.register_model(info.model_uri, cfg.mlflow.registered_model, tags=tags)
    client.update_model_version(cfg.mlflow.registered_model, version.version,
                                description=f"{config['model_name']} trained for ds={tags.get('ds')}")
    return version


# --------------------------------------------------------------------------- aliases and loading


def set_champion(cfg: Config, version: str) -> None:
    configure(cfg).set_registered_model_alias(cfg.mlflow.registered_model, CHAMPION, str(version))


def champion_version(cfg: Config) -> str | None:
    """The version with alias `champion`, or None (no registered model or no alias yet)."""
    try:
        return str(configure(cfg).get_model_version_by_alias(cfg.mlflow.registered_model, CHAMPION).version)
    except MlflowException:
        return None


def find_versions(cfg: Config, **tags: str) -> list[Any]:
    """Registered versions carrying all of `tags`, oldest first (a registry holds few versions)."""
    versions = configure(cfg).search_model_versions(f"name = '{_quoted(cfg.mlflow.registered_model)}'")
    matching = [v for v in versions if all(v.tags.get(k) == str(val) for k, val in tags.items())]
    return sorted(matching, key=lambda v: int(v.version))


def latest_version(cfg: Config) -> str | None:
    """The highest registered version number, or None when nothing is registered."""
    versions = configure(cfg).search_model_versions(f"name = '{_quoted(cfg.mlflow.registered_model)}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def _quoted(name: str) -> str:
    return name.replace("'", "''")


def set_version_tags(cfg: Config, version: str, tags: dict[str, Any]) -> None:
    client = configure(cfg)
    for key, value in tags.items():
        client.set_model_version_tag(cfg.mlflow.registered_model, str(version), key, str(value))


def load_version(cfg: Config, version: str) -> LoadedModel:
    """Rebuild a registered version from its run's `model_files/` (weights loaded with weights_only=True)."""
    client = configure(cfg)
    mv = client.get_model_version(cfg.mlflow.registered_model, str(version))
    with tempfile.TemporaryDirectory(prefix="recsys-load-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=ARTIFACT_DIR, dst_path=tmp,
                                                         tracking_uri=cfg.tracking_uri))
        files = {"state_dict": local / WEIGHTS, "model_config": local / MODEL_CONFIG,
                 "feature_map": local / FEATURE_MAP}
        model, feature_map, config = _rebuild(files)
    return LoadedModel(model=model, feature_map=feature_map, version=str(mv.version), run_id=mv.run_id,
                       model_name=config["model_name"])


def load_champion(cfg: Config) -> LoadedModel:
    """The `champion` version, rebuilt; NoChampionError says what to run when there is none."""
    version = champion_version(cfg)
    if version is None:
        raise NoChampionError(
            f"no version of {cfg.mlflow.registered_model!r} has the alias '{CHAMPION}' in {cfg.tracking_uri}; "
            "run `recsys train --ds <date>` and then `recsys promote --ds <date>`")
    return load_version(cfg, version)
