"""Load the feature contract (`feature_store/specs.yaml`) into frozen dataclasses.

The loader validates everything that later ends up inside SQL (table and column names must be plain
identifiers) and the relations between features (a history names its target; both share one group),
so a typo in the YAML fails here with the feature's name instead of deep inside a query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPECS = Path(__file__).resolve().parent / "specs.yaml"
KINDS = ("categorical", "numeric", "sequence", "session")
ROLES = ("target", "user", "context", "history", "negative_history", "sessions")
# which roles each list kind may have: a sequence is a behaviour history or DIEN's sampled negatives
# aligned with one; a session feature is DSIN's [S, L] sessions
LIST_ROLES = {"sequence": ("history", "negative_history"), "session": ("sessions",)}
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Source:
    """Where a feature is read from: `schema.table.column`."""

    table: str  # schema-qualified, e.g. "marts.training_examples"
    column: str

    @classmethod
    def parse(cls, text: str, feature: str) -> Source:
        parts = str(text).split(".")
        if len(parts) != 3 or not all(_IDENTIFIER.match(p) for p in parts):
            raise ValueError(f"feature {feature!r}: source {text!r} must look like schema.table.column")
        return cls(table=f"{parts[0]}.{parts[1]}", column=parts[2])


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of the contract (see the header of specs.yaml for the meaning of each field)."""

    name: str
    kind: str
    role: str
    source: Source
    scoring_source: Source | None
    group: str | None
    default: float
    max_len: int | None = None         # sequence: T; session: L, behaviours per session
    target: str | None = None          # history / sessions: the target feature attended against
    positive: str | None = None        # negative_history: the history it is aligned with
    max_sessions: int | None = None    # session: S, sessions per example

    @property
    def encoded(self) -> bool:
        """Whether values go through a vocabulary (categorical, sequence and session features)."""
        return self.kind in ("categorical", "sequence", "session")

    @property
    def depth(self) -> int:
        """List nesting of the mart column: 0 scalar, 1 sequence [T], 2 sessions [S, L]."""
        return {"sequence": 1, "session": 2}.get(self.kind, 0)


@dataclass(frozen=True)
class FeatureSpecs:
    """The whole contract: features in file order plus the label and history-length columns."""

    features: tuple[FeatureSpec, ...]
    label: str
    length: str

    def __getitem__(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r} in the spec")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def groups(self) -> tuple[str, ...]:
        """Vocabulary groups in first-use order (one embedding table each)."""
        return tuple(dict.fromkeys(f.group for f in self.features if f.group))

    def of_kind(self, kind: str) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == kind)

    def to_feature_map_dict(self, vocab_sizes: dict[str, int]) -> dict[str, Any]:
        """The JSON shape of `recsys.models.features.FeatureMap` for the given vocabulary sizes."""
        features = []
        for f in self.features:
            entry: dict[str, Any] = {"name": f.name, "kind": f.kind, "group": f.group, "role": f.role}
            if f.role == "negative_history":
                entry.update(max_len=f.max_len, positive=f.positive)
            elif f.kind == "sequence":
                entry.update(max_len=f.max_len, target=f.target)
            elif f.kind == "session":
                entry.update(max_len=f.max_len, target=f.target, max_sessions=f.max_sessions)
            features.append(entry)
        sizes = {g: int(vocab_sizes[g]) for g in self.groups}
        return {"features": features, "vocab_sizes": sizes, "label": self.label, "length": self.length}


def _feature(raw: dict[str, Any]) -> FeatureSpec:
    name = str(raw.get("name", ""))
    if not _IDENTIFIER.match(name):
        raise ValueError(f"feature name {name!r} must be a lower-case identifier")
    kind, role = raw.get("kind"), raw.get("role")
    if kind not in KINDS:
        raise ValueError(f"feature {name!r}: kind {kind!r} is not one of {KINDS}")
    if role not in ROLES:
        raise ValueError(f"feature {name!r}: role {role!r} is not one of {ROLES}")
    if (role in LIST_ROLES.get(kind, ())) != (kind in LIST_ROLES) or (
            kind not in LIST_ROLES and role in ("history", "negative_history", "sessions")):
        raise ValueError(f"feature {name!r}: kind {kind!r} cannot have role {role!r} (sequences have role "
                         f"history or negative_history, sessions role sessions, others neither)")
    group = raw.get("group")
    if kind != "numeric" and not (isinstance(group, str) and _IDENTIFIER.match(group)):
        raise ValueError(f"feature {name!r}: a {kind} feature needs a group (embedding table)")
    max_len, max_sessions = raw.get("max_len"), raw.get("max_sessions")
    if kind in LIST_ROLES and not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"feature {name!r}: a {kind} feature needs a positive integer max_len")
    if kind == "session" and not (isinstance(max_sessions, int) and max_sessions > 0):
        raise ValueError(f"feature {name!r}: a session feature needs a positive integer max_sessions")
    scoring = raw.get("scoring_source")
    default = raw.get("default", {"categorical": 1, "numeric": 0.0}.get(kind, 0))
    return FeatureSpec(
        name=name, kind=kind, role=role, source=Source.parse(raw.get("source", ""), name),
        scoring_source=Source.parse(scoring, name) if scoring else None,
        group=group if kind != "numeric" else None, default=float(default),
        max_len=max_len if kind in LIST_ROLES else None, target=raw.get("target"),
        positive=raw.get("positive") if role == "negative_history" else None,
        max_sessions=max_sessions if kind == "session" else None)


def _check_relations(features: tuple[FeatureSpec, ...]) -> None:
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate feature names in the spec: {names}")
    by_name = dict(zip(names, features, strict=True))
    for f in features:
        if f.role == "negative_history":
            positive = by_name.get(f.positive or "")
            if positive is None or positive.role != "history" or (positive.group, positive.max_len) != (
                    f.group, f.max_len):
                raise ValueError(f"negative history {f.name!r}: positive {f.positive!r} must be a history of "
                                 f"group {f.group!r} with max_len {f.max_len}")
        elif f.kind in LIST_ROLES:
            target = by_name.get(f.target or "")
            if target is None or target.group != f.group:
                raise ValueError(f"{f.kind} {f.name!r}: target {f.target!r} must be a feature of group {f.group!r}")


def load_spec(path: str | Path | None = None) -> FeatureSpecs:
    """Read and validate specs.yaml (default: the one next to this module)."""
    raw = yaml.safe_load(Path(path or DEFAULT_SPECS).read_text()) or {}
    features = tuple(_feature(item) for item in raw.get("features") or [])
    if not features:
        raise ValueError("the feature spec lists no features")
    _check_relations(features)
    label, length = raw.get("label", "label"), raw.get("length", "history_length")
    for column in (label, length):
        if not _IDENTIFIER.match(str(column)):
            raise ValueError(f"spec column {column!r} must be a lower-case identifier")
    return FeatureSpecs(features=features, label=label, length=length)
