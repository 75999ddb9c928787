"""Bad input through the real stages (ingest -> dbt build -> GX) on tiny synthetic data.

Each kind of bad input of issue 3 has one defined behaviour (docs/architecture.md, "Bad input"):
- duplicated events: the repeat is rejected at ingest (`duplicate_event`), the event counts once;
- late events (ts outside the ds whose folder holds them): rejected at ingest (`ts_outside_ds`);
- a user with one event: kept; the positive has an empty history (length 0) and its negatives;
- an item missing from the catalogue: kept; null category / brand / price, encoded as unknown (1);
- null profile fields: kept; null in the marts, encoded as unknown (1);
- an empty day: ingest fails naming the rule and publishes nothing; validate of that ds fails saying so.
Every reject is a row of raw.rejected_rows with its file, line, reason and the record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from feature_store.retrieval import training_frame
from feature_store.spec import load_spec
from feature_store.vocab import UNKNOWN, update_vocab
from recsys.config import Config, load_config
from recsys.data.landing import partition_dir
from recsys.data.synth import synthesize
from recsys.ingest import IngestError
from recsys.pipeline import run_stage
from recsys.validate import DataValidationError

DAY1, DAY2, DAY3 = "2024-01-01", "2024-01-02", "2024-01-03"
ONE_EVENT_USER, NO_PROFILE_FIELDS_USER, UNKNOWN_ITEM = 900001, 900002, 800001
HEADER = "user_id,item_id,behavior,ts,value,device\n"


@dataclass
class Run:
    cfg: Config
    bad_file: Path
    duplicates: list[tuple[int, int, str, str]]   # (user, item, behaviour, ts) re-sent in bad_file
    validation: dict                               # run_stage("validate", DAY2) summary


def query(cfg: Config, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(cfg.paths.warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _add_bad_input(cfg: Config) -> tuple[Path, list[tuple[int, int, str, str]]]:
    """Day 2 gets a second behaviours file of bad rows and a users file with an all-null profile."""
    folder = partition_dir(cfg.paths.landing, "behaviors", DAY2)
    synth_rows = pq.read_table(next(folder.glob("*.parquet"))).slice(0, 3).to_pylist()
    duplicates = [(r["user_id"], r["item_id"], r["behavior"], r["ts"].isoformat()) for r in synth_rows]
    known_item = synth_rows[0]["item_id"]
    lines = [f"{u},{i},{b},{ts},,web\n" for u, i, b, ts in duplicates]            # lines 2-4: re-sent
    lines += ["1,5,view,2024-01-01T23:59:00,,web\n", "2,6,buy,2024-01-01T10:00:00,,ios\n"]  # 5-6: late
    lines += [f"{ONE_EVENT_USER},{known_item},view,2024-01-02T12:00:00,,web\n",   # 7: the user's only event
              f"1,{UNKNOWN_ITEM},view,2024-01-02T12:30:00,,web\n",               # 8: not in the catalogue
              f"{NO_PROFILE_FIELDS_USER},{known_item},view,2024-01-02T08:00:00,,web\n",
              f"{NO_PROFILE_FIELDS_USER},{known_item},cart,2024-01-02T08:05:00,,web\n"]
    bad_file = folder / "zz_bad_input.csv"
    bad_file.write_text(HEADER + "".join(lines))
    users = partition_dir(cfg.paths.landing, "users", DAY2)
    users.mkdir(parents=True, exist_ok=True)
    (users / "zz_profiles.csv").write_text(f"user_id,age,gender,city,occupation\n{NO_PROFILE_FIELDS_USER},,,,\n")
    return bad_file, duplicates


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_HOME", str(home))
    # 5 rejects in a tiny day of ~100 events: above the default 5% reject gate, which is not under test here
    cfg = load_config(overrides={"ingest.max_reject_rate": 0.2})
    synthesize(Path(cfg.paths.landing), days=2, users=30, items=60, seed=5, start=date(2024, 1, 1))
    bad_file, duplicates = _add_bad_input(cfg)
    for stage in ("ingest", "transform", "validate"):
        run_stage(stage, DAY1, cfg)
    run_stage("ingest", DAY2, cfg)
    run_stage("transform", DAY2, cfg)
    yield Run(cfg, bad_file, duplicates, run_stage("validate", DAY2, cfg))
    mp.undo()


def test_the_day_with_bad_input_passes_validation(run: Run) -> None:
    assert run.validation["success"], run.validation["failures"]
    assert set(run.validation["suites"]) == {"raw_behaviors", "user_features", "item_features", "user_histories",
                                             "training_examples", "training_histories", "scoring_candidates"}


def test_every_landing_row_is_accepted_or_queryably_rejected(run: Run) -> None:
    rows_in, accepted, rejected = query(run.cfg, """
        SELECT sum(rows_in), sum(rows_accepted), sum(rows_rejected) FROM raw.ingest_files
        WHERE ds = ? AND entity = 'behaviors'""", [DAY2])[0]
    landed = sum(pq.read_metadata(p).num_rows for p in run.bad_file.parent.glob("*.parquet")) + 9
    assert rows_in == landed and accepted + rejected == rows_in
    assert query(run.cfg, "SELECT count(*) FROM raw.behaviors WHERE ds = ?", [DAY2])[0][0] == accepted
    rejects = query(run.cfg, """
        SELECT source_line, reason, record FROM raw.rejected_rows WHERE ds = ? AND source_file = ?
        ORDER BY source_line""", [DAY2, str(run.bad_file)])
    assert [(line, reason) for line, reason, _ in rejects] == [
        (2, "duplicate_event"), (3, "duplicate_event"), (4, "duplicate_event"),
        (5, "ts_outside_ds"), (6, "ts_outside_ds")]
    assert '"ts":"2024-01-01T23:59:00"' in rejects[3][2]  # the record as it landed


def test_duplicated_and_late_events_never_reach_the_marts(run: Run) -> None:
    events = query(run.cfg, "SELECT count(*) FROM intermediate.int_events_sessionized WHERE ds = ?", [DAY2])[0][0]
    raw = query(run.cfg, "SELECT count(*) FROM raw.behaviors WHERE ds = ?", [DAY2])[0][0]
    positives = query(run.cfg, "SELECT count(*) FROM marts.training_examples WHERE ds = ? AND label = 1",
                      [DAY2])[0][0]
    assert events == raw == positives
    user, item, behavior, ts = run.duplicates[0]
    copies = query(run.cfg, """
        SELECT count(*) FROM intermediate.int_events_sessionized
        WHERE user_id = ? AND item_id = ? AND behavior = ? AND event_at = ?::TIMESTAMP""", [user, item, behavior, ts])
    assert copies == [(1,)]
    late = query(run.cfg, "SELECT count(*) FROM intermediate.int_events_sessionized WHERE user_id = 2 AND "
                          "item_id = 6 AND behavior = 'buy' AND event_at = '2024-01-01 10:00:00'")
    assert late == [(0,)]


def test_a_user_with_one_event_gets_an_empty_history_and_negatives(run: Run) -> None:
    rows = query(run.cfg, """
        SELECT e.label, h.history_length, len(h.item_id_history), len(h.category_history)
        FROM marts.training_examples e JOIN marts.training_histories h USING (ds, event_id)
        WHERE e.ds = ? AND e.user_id = ? ORDER BY e.label DESC""", [DAY2, ONE_EVENT_USER])
    assert rows[0] == (1, 0, 0, 0)
    assert [r[0] for r in rows[1:]] == [0] * run.cfg.features.negatives_per_positive
    assert all(r[1:] == (0, 0, 0) for r in rows)
    history = query(run.cfg, "SELECT history_length FROM marts.user_histories WHERE ds = ? AND user_id = ?",
                    [DAY2, ONE_EVENT_USER])
    assert history == [(1,)]


def test_an_item_missing_from_the_catalogue_is_kept_with_unknown_attributes(run: Run) -> None:
    item = query(run.cfg, "SELECT category, brand, price, events_7d FROM marts.item_features "
                          "WHERE ds = ? AND item_id = ?", [DAY2, UNKNOWN_ITEM])
    assert item == [(None, None, None, 1)]
    positive = query(run.cfg, "SELECT category FROM marts.training_examples WHERE ds = ? AND item_id = ? "
                              "AND label = 1", [DAY2, UNKNOWN_ITEM])
    assert positive == [(None,)]
    frame = encoded_day2(run.cfg)
    # the positive, and any example that drew the item as a negative (it is in the sampling pool too)
    rows = frame.keys["item_id"] == UNKNOWN_ITEM
    assert frame.columns["label"][rows].tolist().count(1.0) == 1
    assert set(frame.columns["category"][rows].tolist()) == {UNKNOWN}
    assert len(set(frame.columns["item_id"][rows].tolist())) == 1
    assert frame.columns["item_id"][rows][0] > UNKNOWN  # the id itself got a vocabulary entry


def test_null_profile_fields_are_kept_and_encoded_as_unknown(run: Run) -> None:
    profiles = query(run.cfg, "SELECT user_id, age, gender, occupation, city, events_1d FROM marts.user_features "
                              "WHERE ds = ? AND user_id IN (?, ?) ORDER BY user_id",
                     [DAY2, ONE_EVENT_USER, NO_PROFILE_FIELDS_USER])
    # no profile at all and a profile row of nulls end up alike
    assert profiles == [(ONE_EVENT_USER, None, None, None, None, 1),
                        (NO_PROFILE_FIELDS_USER, None, None, None, None, 2)]
    frame = encoded_day2(run.cfg)
    users = frame.keys["user_id"]
    rows = users == NO_PROFILE_FIELDS_USER
    assert rows.sum() == 2 * (1 + run.cfg.features.negatives_per_positive)
    for name in ("age", "gender", "occupation"):
        assert set(frame.columns[name][rows].tolist()) == {UNKNOWN}, name
    known = users == 1  # a synthetic user with a full profile
    assert (frame.columns["age"][known] > UNKNOWN).all()


def encoded_day2(cfg: Config):  # noqa: ANN201 (feature_store.retrieval.Frame)
    """Day 2's training examples through the feature store, as training reads them."""
    spec = load_spec(cfg.paths.feature_specs)
    con = duckdb.connect(str(cfg.paths.warehouse))
    try:
        update_vocab(con, DAY1, DAY2, spec)
        return training_frame(con, DAY2, DAY2, spec)
    finally:
        con.close()


def test_an_empty_day_fails_clearly_and_publishes_nothing(run: Run) -> None:
    folder = partition_dir(run.cfg.paths.landing, "behaviors", DAY3)
    folder.mkdir(parents=True)
    (folder / "empty.csv").write_text(HEADER)
    before = query(run.cfg, "SELECT count(*) FROM raw.ingest_files")
    with pytest.raises(IngestError, match=r"files hold no rows \(rule: partition_not_empty\)"):
        run_stage("ingest", DAY3, run.cfg)
    assert query(run.cfg, "SELECT count(*) FROM raw.behaviors WHERE ds = ?", [DAY3]) == [(0,)]
    assert query(run.cfg, "SELECT count(*) FROM raw.ingest_files") == before
    with pytest.raises(DataValidationError, match=f"raw.behaviors holds no rows for ds={DAY3}: an empty day "
                                                  f"publishes nothing") as err:
        run_stage("validate", DAY3, run.cfg)
    # the previous day's row count sets the band; the day has none
    assert "raw_behaviors: expect_table_row_count_to_be_between(" in str(err.value)
    assert "}): observed 0" in str(err.value)
    assert err.value.data_docs is not None and err.value.data_docs.exists()


def test_a_missing_day_fails_naming_the_folder(run: Run) -> None:
    with pytest.raises(IngestError, match=r"ds=2024-01-09: no landing files .*rule: partition_present"):
        run_stage("ingest", "2024-01-09", run.cfg)
