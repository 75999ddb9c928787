"""Feature contract, append-only vocabularies and the encoded training / scoring frames."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from feature_store.retrieval import clamp_to_vocab, feature_map, feature_map_dict, scoring_frame, training_frame
from feature_store.spec import load_spec
from feature_store.vocab import update_vocab, vocab_sizes
from recsys.config import Config, load_config
from recsys.warehouse import connect

D1, D2 = "2024-01-01", "2024-01-02"
SPEC_PATH = Path(__file__).resolve().parents[2] / "feature_store" / "specs.yaml"
SPEC = load_spec(SPEC_PATH)
T = SPEC["item_id_history"].max_len
S, L = SPEC["session_item_ids"].max_sessions, SPEC["session_item_ids"].max_len

EXAMPLES = pa.schema([
    ("ds", pa.date32()), ("example_id", pa.string()), ("event_id", pa.string()), ("user_id", pa.int64()),
    ("item_id", pa.int64()), ("category", pa.string()), ("label", pa.int32()), ("event_at", pa.timestamp("us")),
    ("age", pa.int32()), ("gender", pa.string()), ("occupation", pa.string()), ("city", pa.string()),
    ("hour", pa.int32()), ("weekday", pa.int32()), ("device", pa.string())])
HISTORIES = pa.schema([
    ("ds", pa.date32()), ("event_id", pa.string()), ("user_id", pa.int64()), ("event_at", pa.timestamp("us")),
    ("item_id_history", pa.list_(pa.int64())),
    ("category_history", pa.list_(pa.string())), ("behavior_history", pa.list_(pa.string())),
    ("session_number_history", pa.list_(pa.int32())), ("history_length", pa.int32()),
    ("neg_item_id_history", pa.list_(pa.int64())), ("neg_category_history", pa.list_(pa.string())),
    ("session_item_ids", pa.list_(pa.list_(pa.int64()))), ("session_category_ids", pa.list_(pa.list_(pa.string())))])


def example(ds: str, eid: str, user: int, item: int, category: str | None, label: int,
            items: list[int], categories: list[str | None], age: int | None = 30, hour: int = 10,
            sessions: list[list[int]] | None = None, event: str | None = None) -> dict:
    """One training example with a consistent history (every list as long as `items`); the DIEN
    negative of every history position is the target item, DSIN sessions default to one session holding
    the history (so the vocabularies hold the same values as without them). `event`: the positive whose
    history row it shares (default: its own id)."""
    sessions = [items] if sessions is None and items else sessions or []
    return {"ds": date.fromisoformat(ds), "example_id": eid, "event_id": event or eid, "user_id": user,
            "item_id": item, "category": category,
            "label": label, "event_at": datetime.fromisoformat(f"{ds}T{hour:02d}:00:00"), "age": age,
            "gender": "F", "occupation": "writer", "city": "x", "hour": hour, "weekday": 1, "device": "web",
            "item_id_history": items, "category_history": categories, "behavior_history": ["view"] * len(items),
            "session_number_history": [1] * len(items), "history_length": len(items),
            "neg_item_id_history": [None if i is None else item for i in items],
            "neg_category_history": [category] * len(items),
            "session_item_ids": sessions, "session_category_ids": [["drama"] * len(x) for x in sessions]}


def create_training(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """marts.training_examples (one row per example) and marts.training_histories (one row per event_id,
    the lists of its first example) from `example` rows."""
    create(con, "training_examples", pa.Table.from_pylist(rows, schema=EXAMPLES))
    events: dict[str, dict] = {}
    for row in rows:
        events.setdefault(row["event_id"], row)
    create(con, "training_histories", pa.Table.from_pylist(list(events.values()), schema=HISTORIES))


def create(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """CREATE TABLE marts.<name> from an Arrow table (the test's stand-in for the dbt mart)."""
    con.register("fixture_rows", table)
    con.execute(f"CREATE OR REPLACE TABLE marts.{name} AS SELECT * FROM fixture_rows")
    con.unregister("fixture_rows")


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    return load_config()


@pytest.fixture
def con(cfg: Config):
    long_history = list(range(100, 160))  # 60 > max_len: only the last 50 are kept
    rows = [
        example(D1, "a", 1, 10, "drama", 1, [11, 12], ["drama", "drama"]),
        example(D1, "b", 1, 20, "comedy", 0, [11, 12], ["drama", "drama"], event="a"),  # a's negative
        example(D1, "c", 2, 12, None, 1, [], [], age=None),  # NULL category, NULL age, empty history
        example(D2, "d", 2, 30, "horror", 1, [12, 99, None], ["drama", "sci-fi", None], hour=23),
        example(D2, "e", 3, 10, "drama", 0, long_history, ["drama"] * 60),
    ]
    connection = connect(cfg, read_only=False)
    create_training(connection, rows)
    yield connection
    connection.close()


def vocab(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    return {(g, v): i for g, v, i in con.execute("SELECT * FROM features.vocab").fetchall()}


def test_vocab_is_append_only_across_days(con: duckdb.DuckDBPyConnection) -> None:
    added = update_vocab(con, D1, D1, SPEC)
    first = vocab(con)
    # items of D1 (targets and histories): 10, 11, 12, 20 -> 2..5 in text order; 0 and 1 stay reserved
    assert {v: i for (g, v), i in first.items() if g == "item"} == {"10": 2, "11": 3, "12": 4, "20": 5}
    assert added["item"] == 4 and min(first.values()) == 2
    assert ("age", "None") not in first and all(v is not None for _, v in first)

    update_vocab(con, D1, D2, SPEC)
    second = vocab(con)
    assert all(second[key] == idx for key, idx in first.items())  # nothing renumbered
    new_items = sorted((i, v) for (g, v), i in second.items() if g == "item" and (g, v) not in first)
    expected = sorted(["30", "99"] + [str(i) for i in range(100, 160)])  # text order, appended after 5
    assert [v for _, v in new_items] == expected and [i for i, _ in new_items] == list(range(6, 6 + len(expected)))
    assert update_vocab(con, D1, D2, SPEC) == {}  # idempotent
    assert vocab(con) == second
    assert vocab_sizes(con, SPEC)["item"] == 6 + len(expected)


def test_unknown_and_null_values_encode_to_one(con: duckdb.DuckDBPyConnection) -> None:
    update_vocab(con, D1, D1, SPEC)  # D2's new values are not in the vocabulary
    frame = training_frame(con, D1, D2, SPEC)
    items, ids = vocab(con), list(frame.keys["item_id"])
    assert frame["category"][ids.index(12)] == 1  # NULL category
    assert frame["age"][ids.index(12)] == 1  # NULL age
    d = ids.index(30)
    assert frame["item_id"][d] == 1 and frame["category"][d] == 1 and frame["hour"][d] == 1  # unseen values
    # history [12, 99, None]: known, unseen, NULL -> [idx(12), 1, 1] then padding
    assert frame["item_id_history"][d, :4].tolist() == [items[("item", "12")], 1, 1, 0]
    assert frame["category_history"][d, :4].tolist() == [items[("category", "drama")], 1, 1, 0]


def test_training_frame_shapes_padding_and_order(con: duckdb.DuckDBPyConnection) -> None:
    update_vocab(con, D1, D2, SPEC)
    frame = training_frame(con, D1, D2, SPEC)
    items = vocab(con)
    assert len(frame) == 5 and frame.keys["user_id"].tolist() == [1, 1, 2, 2, 3]  # ordered by (ds, example_id)
    for f in SPEC.features:
        expected = {"sequence": (5, T), "session": (5, S, L)}.get(f.kind, (5,))
        assert frame[f.name].shape == expected and frame[f.name].dtype == np.int64, f.name
    assert frame["label"].dtype == np.float32 and frame["label"].tolist() == [1, 0, 1, 1, 0]
    assert frame["history_length"].tolist() == [2, 2, 0, 3, T]
    first = frame["item_id_history"][0]
    assert first[:2].tolist() == [items[("item", "11")], items[("item", "12")]] and not first[2:].any()
    assert not frame["item_id_history"][2].any()  # empty history: all padding
    # 60 behaviours: the most recent 50 (items 110..159), oldest first, no padding
    assert frame["item_id_history"][4].tolist() == [items[("item", str(i))] for i in range(110, 160)]
    assert frame.keys["ds"].astype(str).tolist() == [D1, D1, D1, D2, D2]


def test_scoring_frame_joins_user_state_as_of_ds(con: duckdb.DuckDBPyConnection) -> None:
    day = date.fromisoformat(D2)
    create(con, "user_histories", pa.table({
        "ds": [day], "user_id": [1], "item_id_history": [[10, 30]], "category_history": [["drama", "horror"]],
        "behavior_history": [["view", "buy"]],
        "event_at_history": [[datetime(2024, 1, 2, 9), datetime(2024, 1, 2, 10)]],
        "session_number_history": [[1, 2]], "history_length": [2],
        "session_item_ids": [[[10], [30]]], "session_category_ids": [[["drama"], ["horror"]]]}))
    create(con, "user_features", pa.table({
        "ds": [day, day], "user_id": [1, 2], "age": [30, 45], "gender": ["F", "M"], "occupation": ["writer", "x"],
        "city": ["a", "b"], "events_1d": [2, 0], "events_7d": [2, 1], "events_30d": [2, 1],
        "days_since_last_event": [0, 1]}))
    create(con, "scoring_candidates", pa.table({
        "ds": [day] * 4, "user_id": [2, 1, 1, 1], "item_id": [20, 12, 20, 12],
        "category": ["comedy", "drama", "comedy", "drama"], "candidate_source": ["pop", "pop", "pop", "co"]}))
    update_vocab(con, D1, D2, SPEC)
    frame = scoring_frame(con, D2, SPEC)
    items = vocab(con)
    assert frame.keys["user_id"].tolist() == [1, 1, 2] and frame.keys["item_id"].tolist() == [12, 20, 20]
    assert frame.keys["candidate_source"].tolist() == ["co", "pop", "pop"]  # duplicate candidate kept once
    assert frame.user_keys["user_id"].tolist() == [1, 2] and frame.user_index.tolist() == [0, 0, 1]
    assert frame.user_columns["item_id_history"].shape == (2, T)  # once per user, not per candidate
    assert frame["item_id_history"].shape == (3, T)
    assert frame["item_id_history"][0, :3].tolist() == [items[("item", "10")], items[("item", "30")], 0]
    assert not frame["item_id_history"][2].any() and frame["history_length"].tolist() == [2, 2, 0]
    assert frame.user_keys["item_id_history"][0, :3].tolist() == [10, 30, 0]  # raw ids for explanations
    assert (frame["hour"] == 1).all() and (frame["weekday"] == 1).all()  # context unknown at scoring time
    assert frame["age"][2] == items[("age", "45")] and frame["item_id"][0] == items[("item", "12")]
    batch = frame.batch(np.array([2, 0]))
    assert batch["item_id_history"].shape == (2, T) and batch["history_length"].tolist() == [0, 2]
    # DSIN sessions as of ds, per user [U, S, L]; user 2 has none: all zero
    assert frame.user_columns["session_item_ids"].shape == (2, S, L) and batch["session_item_ids"].shape == (2, S, L)
    assert frame["session_item_ids"][0, :3, :2].tolist() == [[items[("item", "10")], 0], [items[("item", "30")], 0],
                                                              [0, 0]]
    assert not frame["session_item_ids"][2].any() and not frame["session_category_ids"][2].any()
    # DIEN negatives are training-only: all padding at scoring time
    assert frame["neg_item_id_history"].shape == (3, T) and not frame["neg_item_id_history"].any()


def test_feature_map_matches_the_spec(con: duckdb.DuckDBPyConnection) -> None:
    update_vocab(con, D1, D2, SPEC)
    fmap = feature_map(con, SPEC).to_dict()
    assert [f["name"] for f in fmap["features"]] == list(SPEC.names)
    for entry in fmap["features"]:
        spec = SPEC[entry["name"]]
        assert (entry["kind"], entry["group"], entry["role"]) == (spec.kind, spec.group, spec.role)
    history = next(f for f in fmap["features"] if f["name"] == "item_id_history")
    assert history["max_len"] == T and history["target"] == "item_id"
    max_idx = dict(con.execute("SELECT feature_group, max(idx) FROM features.vocab GROUP BY 1").fetchall())
    assert fmap["vocab_sizes"] == {g: max_idx.get(g, 1) + 1 for g in SPEC.groups}
    assert fmap["label"] == "label" and fmap["length"] == "history_length"
    assert feature_map_dict(con, SPEC)["vocab_sizes"] == fmap["vocab_sizes"]


def test_clamp_maps_indices_beyond_a_model_vocab_to_unknown() -> None:
    fmap = SPEC.to_feature_map_dict({g: 5 for g in SPEC.groups})
    batch = {"item_id": np.array([2, 4, 5, 9]), "item_id_history": np.array([[3, 7, 0], [5, 1, 0]])}
    out = clamp_to_vocab(batch, fmap)
    assert out["item_id"].tolist() == [2, 4, 1, 1]
    assert out["item_id_history"].tolist() == [[3, 1, 0], [1, 1, 0]]
    # DIEN negatives [B, T] and DSIN sessions [B, S, L] too; padding (0) stays padding
    batch = {"neg_item_id_history": np.array([[4, 5, 0]]),
             "session_item_ids": np.array([[[2, 6, 0], [0, 0, 0]]]), "session_category_ids": np.array([[[9, 0, 0]]])}
    out = clamp_to_vocab(batch, fmap)
    assert out["neg_item_id_history"].tolist() == [[4, 1, 0]]
    assert out["session_item_ids"].tolist() == [[[2, 1, 0], [0, 0, 0]]]
    assert out["session_category_ids"].tolist() == [[[1, 0, 0]]]


def test_training_frame_stores_each_positive_history_once(con: duckdb.DuckDBPyConnection) -> None:
    update_vocab(con, D1, D2, SPEC)
    frame = training_frame(con, D1, D2, SPEC)
    # 5 examples, 4 history rows (b is a's negative); ordered by (ds, event_id): a, c, d, e
    assert frame.user_columns["item_id_history"].shape == (4, T)
    assert frame.user_columns["session_item_ids"].shape == (4, S, L)
    assert frame.user_index.tolist() == [0, 0, 1, 2, 3] and "item_id_history" not in frame.columns
    assert (frame["item_id_history"][0] == frame["item_id_history"][1]).all()  # the negative shares it
    sub = frame.take(np.array([4, 1]))
    batch = sub.batch(np.array([0, 1]), ("item_id", "item_id_history", "history_length", "label"))
    assert batch["item_id_history"].shape == (2, T) and batch["history_length"].tolist() == [T, 2]
    assert batch["label"].tolist() == [0.0, 0.0] and sub.user_columns is frame.user_columns


def test_training_frame_refuses_examples_without_a_history_row(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DELETE FROM marts.training_histories WHERE event_id = 'a'")
    update_vocab(con, D1, D2, SPEC)
    with pytest.raises(ValueError, match="2 rows of marts.training_examples .* no row of marts.training_histories"):
        training_frame(con, D1, D2, SPEC)


@pytest.mark.parametrize(("change", "message"), [
    (("max_len: 50", "max_len: 0"), "max_len"),
    (("source: marts.training_examples.age", "source: age; DROP TABLE x"), "schema.table.column"),
    (("target: item_id", "target: category"), "target"),
    (("kind: categorical", "kind: dense"), "kind"),
    (("role: history", "role: user"), "history"),
])
def test_spec_rejects_broken_contracts(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = SPEC_PATH.read_text().replace(*change, 1)
    broken = tmp_path / "specs.yaml"
    broken.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_spec(broken)



def test_numeric_features_pass_through_with_their_default(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    text = SPEC_PATH.read_text()
    block = text[text.index("  - name: weekday"):text.index("  - name: item_id_history")]
    numeric = block.replace("kind: categorical", "kind: numeric").replace("default: 1", "default: -1.0")
    custom = tmp_path / "specs.yaml"
    custom.write_text(text.replace(block, numeric))
    spec = load_spec(custom)
    con.execute("UPDATE marts.training_examples SET weekday = NULL WHERE example_id = 'e'")
    update_vocab(con, D1, D2, spec)
    frame = training_frame(con, D1, D2, spec)
    assert frame["weekday"].dtype == np.float32 and frame["weekday"].tolist() == [1.0, 1.0, 1.0, 1.0, -1.0]
    assert "weekday" not in {g for g, _ in vocab(con)} and spec["weekday"].group is None
    assert feature_map(con, spec).get("weekday").kind == "numeric"


def test_dien_negatives_and_dsin_sessions_encode_to_fixed_arrays(con: duckdb.DuckDBPyConnection) -> None:
    seven_sessions = [[200 + k] for k in range(S + 2)]  # only the most recent S are kept
    long_session = list(range(300, 300 + L + 3))  # only its most recent L behaviours are kept
    rows = [example(D1, "s1", 7, 10, "drama", 1, [11, 12, 20], ["drama"] * 3, sessions=[[11], [12, 20]]),
            example(D1, "s2", 8, 10, "drama", 1, [], []),
            example(D1, "s3", 9, 10, "drama", 1, [11], ["drama"], sessions=seven_sessions + [long_session])]
    create_training(con, rows)
    update_vocab(con, D1, D1, SPEC)
    frame, items = training_frame(con, D1, D1, SPEC), vocab(con)
    idx = {v: i for (g, v), i in items.items() if g == "item"}
    negatives = frame["neg_item_id_history"]
    assert negatives.shape == (3, T) and negatives.dtype == np.int64
    # aligned with the history: one negative per valid position, 0 where the history is padding
    assert ((negatives != 0) == (frame["item_id_history"] != 0)).all()
    assert negatives[0, :4].tolist() == [idx["10"]] * 3 + [0]
    sessions = frame["session_item_ids"]
    assert sessions.shape == (3, S, L) and sessions.dtype == np.int64
    assert sessions[0, :3, :3].tolist() == [[idx["11"], 0, 0], [idx["12"], idx["20"], 0], [0, 0, 0]]
    assert not sessions[1].any()  # no sessions at all
    kept = [[idx[str(200 + k)]] + [0] * (L - 1) for k in range(3, S + 2)]  # the last S - 1 single-item sessions
    assert sessions[2].tolist() == kept + [[idx[str(i)] for i in long_session[-L:]]]
    categories = frame["session_category_ids"]
    assert ((categories != 0) == (sessions != 0)).all()
