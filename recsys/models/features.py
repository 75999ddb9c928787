"""The feature map: the one contract between the feature store and the models (JSON-serialisable).

A feature map says which batch keys a model reads and how: every categorical or sequence feature
names an embedding `group` (features of one group share one table, so the history of item ids and the
target item id use the same rows), every sequence names the `target` feature it is attended against.
`vocab_sizes[group]` counts the table's rows including 0 = padding and 1 = unknown.

This module imports no torch, so the feature store can build and check a map without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("categorical", "numeric", "sequence")
ROLES = ("target", "user", "context", "history")


@dataclass(frozen=True)
class Feature:
    """One model input. `group` for categorical and sequence features; `max_len`, `target` for sequences."""

    name: str
    kind: str
    role: str
    group: str | None = None
    max_len: int | None = None
    target: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Feature:
        return cls(name=str(raw["name"]), kind=str(raw["kind"]), role=str(raw["role"]), group=raw.get("group"),
                   max_len=raw.get("max_len"), target=raw.get("target"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "group": self.group, "role": self.role}
        if self.kind == "sequence":
            out.update(max_len=self.max_len, target=self.target)
        return out

    def check(self) -> None:
        """Raise ValueError when the fields do not fit together."""
        if self.kind not in KINDS or self.role not in ROLES:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} / role {self.role!r} not in {KINDS} / {ROLES}")
        if (self.kind == "sequence") != (self.role == "history"):
            raise ValueError(f"feature {self.name!r}: sequences and only sequences have role 'history'")
        if self.kind != "numeric" and not self.group:
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature needs a group (embedding table)")
        if self.kind == "sequence" and not (isinstance(self.max_len, int) and self.max_len > 0 and self.target):
            raise ValueError(f"feature {self.name!r}: a sequence needs a positive max_len and a target")


@dataclass(frozen=True)
class FeatureMap:
    """Features in map order, embedding rows per group, and the label / history-length batch keys."""

    features: tuple[Feature, ...]
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    label: str = "label"
    length: str = "history_length"

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in the feature map: {names}")
        for f in self.features:
            f.check()
            if f.group is not None and int(self.vocab_sizes.get(f.group, 0)) < 2:
                raise ValueError(f"feature {f.name!r}: vocab_sizes[{f.group!r}] must be >= 2 (padding + unknown)")
        for seq in self.sequences:
            target = self.get(seq.target or "")
            if target is None or target.kind != "categorical" or target.role != "target" or target.group != seq.group:
                raise ValueError(f"sequence {seq.name!r}: target {seq.target!r} must be a categorical target feature "
                                 f"of group {seq.group!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureMap:
        return cls(features=tuple(Feature.from_dict(f) for f in raw["features"]),
                   vocab_sizes={str(g): int(n) for g, n in raw["vocab_sizes"].items()},
                   label=str(raw.get("label", "label")), length=str(raw.get("length", "history_length")))

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features], "vocab_sizes": dict(self.vocab_sizes),
                "label": self.label, "length": self.length}

    def get(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    def of(self, kind: str | None = None, role: str | None = None) -> tuple[Feature, ...]:
        """Features of the given kind and/or role, in map order."""
        return tuple(f for f in self.features if kind in (None, f.kind) and role in (None, f.role))

    @property
    def sequences(self) -> tuple[Feature, ...]:
        return self.of(kind="sequence")

    @property
    def groups(self) -> tuple[str, ...]:
        """Embedding groups in first-use order."""
        return tuple(dict.fromkeys(f.group for f in self.features if f.group))

    @property
    def inputs(self) -> tuple[str, ...]:
        """Batch keys a model reads: every feature and the history length."""
        return tuple(f.name for f in self.features) + (self.length,)
