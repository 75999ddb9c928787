"""The feature map: the one contract between the feature store and the models (JSON-serialisable).

A feature map says which batch keys a model reads and how: every categorical, sequence or session
feature names an embedding `group` (features of one group share one table, so the history of item ids
and the target item id use the same rows). Kinds and roles:

- `categorical` [B] / `numeric` [B] with role target (the candidate), user or context;
- `sequence` [B, T] with role `history` (oldest first, 0 = padding at the end; `target` names the
  categorical target it is attended against) or `negative_history` (one sampled negative per position
  of the history named by `positive`, same group and max_len; DIEN's auxiliary loss, training only);
- `session` [B, S, L] with role `sessions` (DSIN: the last `max_sessions` sessions, oldest first, each
  with its last `max_len` behaviours, oldest first; 0 = padding, empty sessions all zero; `target` as
  for histories).

`vocab_sizes[group]` counts the table's rows including 0 = padding and 1 = unknown.
This module imports no torch, so the feature store can build and check a map without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("categorical", "numeric", "sequence", "session")
ROLES = ("target", "user", "context", "history", "negative_history", "sessions")
ROLES_OF_KIND = {"categorical": ("target", "user", "context"), "numeric": ("target", "user", "context"),
                 "sequence": ("history", "negative_history"), "session": ("sessions",)}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Feature:
    """One model input.

    `group` for every kind but numeric; `max_len` for sequences and sessions; `target` for histories
    and sessions; `positive` for negative histories; `max_sessions` for sessions.
    """

    name: str
    kind: str
    role: str
    group: str | None = None
    max_len: int | None = None
    target: str | None = None
    positive: str | None = None
    max_sessions: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Feature:
        return cls(name=str(raw["name"]), kind=str(raw["kind"]), role=str(raw["role"]), group=raw.get("group"),
                   max_len=raw.get("max_len"), target=raw.get("target"), positive=raw.get("positive"),
                   max_sessions=raw.get("max_sessions"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "group": self.group, "role": self.role}
        if self.role == "history":
            out.update(max_len=self.max_len, target=self.target)
        elif self.role == "negative_history":
            out.update(max_len=self.max_len, positive=self.positive)
        elif self.kind == "session":
            out.update(max_len=self.max_len, target=self.target, max_sessions=self.max_sessions)
        return out

    def check(self) -> None:
        """Raise ValueError when the fields of this feature do not fit together (relations: FeatureMap)."""
        if self.kind not in KINDS or self.role not in ROLES:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} / role {self.role!r} not in {KINDS} / {ROLES}")
        if self.role not in ROLES_OF_KIND[self.kind]:
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature has a role in {ROLES_OF_KIND[self.kind]}, "
                             f"not {self.role!r}")
        if self.kind != "numeric" and not self.group:
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature needs a group (embedding table)")
        if self.kind in ("sequence", "session") and not _positive_int(self.max_len):
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature needs a positive integer max_len")
        if self.role in ("history", "sessions") and not self.target:
            raise ValueError(f"feature {self.name!r}: a {self.role} feature needs a target")
        if self.role == "negative_history" and not self.positive:
            raise ValueError(f"feature {self.name!r}: a negative history needs `positive` (the history it pairs with)")
        if self.kind == "session" and not _positive_int(self.max_sessions):
            raise ValueError(f"feature {self.name!r}: a session feature needs a positive integer max_sessions")


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
        for seq in self.histories + self.sessions:
            target = self.get(seq.target or "")
            if target is None or target.kind != "categorical" or target.role != "target" or target.group != seq.group:
                raise ValueError(f"{seq.role} feature {seq.name!r}: target {seq.target!r} must be a categorical "
                                 f"target feature of group {seq.group!r}")
        for neg in self.negatives:
            pos = self.get(neg.positive or "")
            if pos is None or pos.role != "history" or pos.group != neg.group or pos.max_len != neg.max_len:
                raise ValueError(f"negative history {neg.name!r}: positive {neg.positive!r} must be a history of "
                                 f"group {neg.group!r} with max_len {neg.max_len}")
        if len({n.positive for n in self.negatives}) != len(self.negatives):
            raise ValueError("two negative histories pair with the same history")
        if len({(s.max_sessions, s.max_len) for s in self.sessions}) > 1:
            raise ValueError("all session features must share max_sessions and max_len (they describe the same "
                             "sessions)")

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
        """Every [B, T] feature: histories and negative histories."""
        return self.of(kind="sequence")

    @property
    def histories(self) -> tuple[Feature, ...]:
        """Behaviour histories (role history), the keys of DIN / DIEN."""
        return self.of(role="history")

    @property
    def negatives(self) -> tuple[Feature, ...]:
        return self.of(role="negative_history")

    @property
    def sessions(self) -> tuple[Feature, ...]:
        return self.of(kind="session")

    def negative_of(self, history: str) -> Feature | None:
        """The negative history paired with `history`, if the map has one."""
        return next((f for f in self.negatives if f.positive == history), None)

    @property
    def groups(self) -> tuple[str, ...]:
        """Embedding groups in first-use order."""
        return tuple(dict.fromkeys(f.group for f in self.features if f.group))

    @property
    def inputs(self) -> tuple[str, ...]:
        """Batch keys a model reads: every feature and the history length."""
        return tuple(f.name for f in self.features) + (self.length,)
