"""Importers: MovieLens in four layouts and Taobao UserBehavior.csv into the landing layout.

Fixture files are written by the tests themselves; the real MovieLens-100K is read from ../shared when
that folder is there.
"""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import recsys.data.importers as importers
from recsys.data.importers import import_movielens, import_taobao

SHARED_ML100K = Path(__file__).resolve().parents[2].parent / "shared/data/ml-100k"

# unix seconds of a few UTC moments
T_0101_2359 = 883699199   # 1998-01-01 23:59:59 UTC
T_0102_0000 = 883699200   # 1998-01-02 00:00:00 UTC
T_0102_1200 = 883742400   # 1998-01-02 12:00:00 UTC
T_0105_0800 = 883987200   # 1998-01-05 08:00:00 UTC


def _partition(landing: Path, entity: str, ds: str) -> list[dict]:
    folder = landing / entity / f"ds={ds}"
    return [row for f in sorted(folder.iterdir()) for row in pq.read_table(f).to_pylist()]


def _days(landing: Path, entity: str) -> list[str]:
    folder = landing / entity
    return sorted(p.name.removeprefix("ds=") for p in folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------------
# MovieLens
# ------------------------------------------------------------------------------------------------

RATINGS = [(1, 10, 4, T_0101_2359), (2, 10, 5, T_0102_0000), (1, 20, 3, T_0102_1200), (2, 30, 1, T_0105_0800)]


def _genre_flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in importers.ML100K_GENRES)


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    items = [f"10|Misérables, Les (1995)|01-Jan-1995||http://x|{_genre_flags('Drama', 'Musical')}",
             f"20|Toy Story (1995)|01-Jan-1995||http://y|{_genre_flags('Animation', 'Comedy')}",
             f"30|unknown|||http://z|{_genre_flags()}"]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return folder


def _check_ratings(landing: Path, summary: importers.ImportSummary) -> None:
    assert summary.days == ["1998-01-01", "1998-01-02", "1998-01-05"]
    assert summary.rows_in == summary.rows_written == 4 and summary.rows_rejected == 0
    assert summary.users == 2 and summary.items == 3
    day2 = _partition(landing, "behaviors", "1998-01-02")
    assert [(r["user_id"], r["item_id"], r["behavior"], r["value"], r["ts"]) for r in day2] == [
        (2, 10, "rating", 5.0, datetime(1998, 1, 2, 0, 0)),
        (1, 20, "rating", 3.0, datetime(1998, 1, 2, 12, 0))]
    assert _partition(landing, "behaviors", "1998-01-01")[0]["ts"] == datetime(1998, 1, 1, 23, 59, 59)
    assert all(r["device"] is None for r in day2)


def test_ml100k_original_files(ml100k: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = import_movielens(ml100k, landing)
    assert summary.source_format == "ml-100k"
    _check_ratings(landing, summary)
    assert _days(landing, "users") == _days(landing, "items") == ["1998-01-01"]
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == "Misérables, Les (1995)" and items[10]["category"] == "Drama"
    assert items[20]["category"] == "Animation" and items[30]["category"] is None
    users = _partition(landing, "users", "1998-01-01")
    assert users == [{"user_id": 1, "age": 24, "gender": "M", "city": None, "occupation": "technician"},
                     {"user_id": 2, "age": 53, "gender": "F", "city": None, "occupation": "other"}]


def test_window_skips_rows_and_snapshots_go_to_first_day_written(ml100k: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = import_movielens(ml100k / "u.data", landing, start=date(1998, 1, 2), end=date(1998, 1, 4))
    assert summary.days == ["1998-01-02"] and summary.rows_written == 2
    assert summary.rows_skipped_outside_window == 2
    assert summary.rows_in == summary.rows_written + summary.rows_skipped_outside_window
    assert _days(landing, "behaviors") == _days(landing, "users") == _days(landing, "items") == ["1998-01-02"]


def test_ml1m_double_colon_files(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    movies = ("10::Misérables, Les (1995)::Drama|Musical\n"
              "20::Toy Story (1995)::Animation|Children's|Comedy\n30::Heat (1995)::Action\n")
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    landing = tmp_path / "landing"
    summary = import_movielens(folder, landing)
    assert summary.source_format == "ml-1m"
    _check_ratings(landing, summary)
    users = {r["user_id"]: r for r in _partition(landing, "users", "1998-01-01")}
    assert users[1]["occupation"] == "K-12 student" and users[2]["occupation"] == "self-employed"
    assert users[2]["age"] == 56 and users[2]["gender"] == "M"
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == "Misérables, Les (1995)" and items[20]["category"] == "Animation"


def test_csv_release_with_quoted_titles_and_no_profiles(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                        + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in RATINGS))
    (folder / "movies.csv").write_text('movieId,title,genres\n'
                                       '10,"American President, The (1995)",Comedy|Drama\n'
                                       "20,Toy Story (1995),Animation\n30,Empty (2020),(no genres listed)\n")
    landing = tmp_path / "landing"
    summary = import_movielens(folder / "movies.csv", landing)
    assert summary.source_format == "ml-csv" and summary.rows_written == 4
    assert [r["value"] for r in _partition(landing, "behaviors", "1998-01-02")] == [5.5, 3.5]
    assert _days(landing, "users") == []
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == "American President, The (1995)" and items[10]["category"] == "Comedy"
    assert items[30]["category"] is None


def test_atomic_files(tmp_path: Path) -> None:
    folder = tmp_path / "atomic"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\t"
                                         "zip_code:token\n1\t24\tM\ttechnician\t85711\n"
                                         "2\t53\tF\tother\t94043\n")
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                                         "class:token_seq\n10\tMisérables, Les\t1995\tDrama Musical\n"
                                         "20\tToy Story\t1995\tChildren's Comedy\n30\tHeat\t1995\t\n")
    landing = tmp_path / "landing"
    summary = import_movielens(folder, landing)
    assert summary.source_format == "atomic"
    _check_ratings(landing, summary)
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert (items[10]["title"], items[10]["category"]) == ("Misérables, Les", "Drama")
    assert items[20]["category"] == "Children's" and items[30]["category"] is None
    assert [r["age"] for r in _partition(landing, "users", "1998-01-01")] == [24, 53]


def test_unrecognised_folder_names_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError) as err:
        import_movielens(tmp_path, tmp_path / "landing")
    message = str(err.value)
    assert str(tmp_path) in message
    assert all(name in message for name in ("u.data", "ratings.dat", "ratings.csv", ".inter"))
    assert not (tmp_path / "landing").exists()


def test_rerun_replaces_partitions(ml100k: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    import_movielens(ml100k, landing)
    first = sorted(p.read_bytes() for p in landing.rglob("*.parquet"))
    summary = import_movielens(ml100k, landing)
    assert sorted(p.read_bytes() for p in landing.rglob("*.parquet")) == first
    assert sum(len(_partition(landing, "behaviors", d)) for d in summary.days) == 4


@pytest.mark.skipif(not SHARED_ML100K.is_dir(), reason="../shared/data/ml-100k is not on this machine")
def test_real_movielens_100k(tmp_path: Path) -> None:
    summary = import_movielens(SHARED_ML100K, tmp_path)
    assert summary.source_format == "atomic"
    assert summary.rows_in == summary.rows_written == 100_000 and summary.rows_rejected == 0
    assert summary.users == 943 and summary.items == 1682
    assert 200 <= len(summary.days) <= 220
    assert summary.days[0] == "1997-09-20" and summary.days[-1] == "1998-04-22"
    total = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "behaviors").rglob("*.parquet"))
    assert total == 100_000
    assert len(_partition(tmp_path, "users", summary.days[0])) == 943
    items = _partition(tmp_path, "items", summary.days[0])
    assert len(items) == 1682 and {r["item_id"]: r["category"] for r in items}[1] == "Animation"


# ------------------------------------------------------------------------------------------------
# Taobao
# ------------------------------------------------------------------------------------------------

TAOBAO_LINES = [
    b"1,100,5,pv,1511539199",      # 1: 2017-11-24 23:59:59 Beijing: before the window
    b"1,100,5,pv,1511539200",      # 2: 2017-11-25 00:00:00 Beijing = 2017-11-24T16:00:00Z
    b"2,101,6,buy,1511625599",     # 3: 2017-11-25 23:59:59 Beijing
    b"2,101,6,cart,1511625600",    # 4: 2017-11-26 00:00:00 Beijing
    b"3,102,7,like,1511600000",    # 5: unknown behaviour
    b"3,abc,7,pv,1511600000",      # 6: item id not an integer
    b"4,103,8,fav",                # 7: four fields
    b"",                           # 8: empty line
    b"5,104,8,fav,1512403200",     # 9: 2017-12-05 00:00 Beijing: after the window
    b"5,104,8, fav ,1512316799",   # 10: 2017-12-03 23:59:59 Beijing, spaces around the behaviour
    b"6,105,9,pv,15116x0000",      # 11: timestamp not an integer
    b"7,106,\xff\xfe,pv,1511600000",  # 12: invalid UTF-8
    b"7,107,9,PV,1511700000",      # 13: 2017-11-26 20:40 Beijing, upper case behaviour
]
REJECTED = {1: "outside_window", 5: "behavior_unknown", 6: "item_id_not_integer",
            7: "malformed_row (expected 5 fields, got 4)", 8: "empty_row", 9: "outside_window",
            11: "ts_not_integer", 12: "invalid_utf8"}


@pytest.fixture
def taobao_file(tmp_path: Path) -> Path:
    path = tmp_path / "UserBehavior.csv"
    path.write_bytes(b"\n".join(TAOBAO_LINES) + b"\n")
    return path


def _read_rejected(landing: Path) -> list[dict]:
    with open(landing / "_rejected" / "taobao" / "rejected.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_taobao(landing: Path, path: Path, summary: importers.ImportSummary) -> None:
    assert summary.rows_in == 13 and summary.rows_rejected == 8 and summary.rows_written == 5
    assert summary.rows_in == summary.rows_written + summary.rows_rejected
    assert summary.days == ["2017-11-25", "2017-11-26", "2017-12-03"] == _days(landing, "behaviors")
    day1 = _partition(landing, "behaviors", "2017-11-25")
    assert [(r["user_id"], r["item_id"], r["behavior"], r["ts"]) for r in day1] == [
        (1, 100, "view", datetime(2017, 11, 24, 16, 0, 0)),
        (2, 101, "buy", datetime(2017, 11, 25, 15, 59, 59))]
    day2 = _partition(landing, "behaviors", "2017-11-26")
    assert [(r["user_id"], r["behavior"]) for r in day2] == [(2, "cart"), (7, "view")]
    assert [r["behavior"] for r in _partition(landing, "behaviors", "2017-12-03")] == ["fav"]
    assert _days(landing, "items") == ["2017-11-25"]
    items = {r["item_id"]: r["category"] for r in _partition(landing, "items", "2017-11-25")}
    assert items == {100: "5", 101: "6", 104: "8", 107: "9"}
    assert summary.users == 4 and summary.items == 4
    rejected = _read_rejected(landing)
    assert {int(r["source_line"]): r["reason"] for r in rejected} == REJECTED
    assert all(r["source_file"] == str(path) for r in rejected)
    by_line = {int(r["source_line"]): r["record"] for r in rejected}
    assert by_line[5] == "3,102,7,like,1511600000" and by_line[8] == "" and by_line[12].startswith("7,106,")


def test_taobao_beijing_days_and_rejects(taobao_file: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = import_taobao(taobao_file, landing)
    assert summary.source_format == "taobao"
    assert summary.rejected_path == landing / "_rejected" / "taobao" / "rejected.csv"
    _check_taobao(landing, taobao_file, summary)


def test_taobao_streams_in_small_blocks(taobao_file: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers, "TAOBAO_BLOCK_BYTES", 64)  # a few lines per block
    landing = tmp_path / "landing"
    _check_taobao(landing, taobao_file, import_taobao(taobao_file, landing))


def test_taobao_rerun_with_a_narrower_window(taobao_file: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    import_taobao(taobao_file, landing)
    summary = import_taobao(taobao_file, landing, start=date(2017, 11, 26), end=date(2017, 11, 26))
    assert summary.days == ["2017-11-26"] and summary.rows_written == 2 and summary.rows_rejected == 11
    assert len(_read_rejected(landing)) == 11  # replaced, not appended
    assert [r["item_id"] for r in _partition(landing, "items", "2017-11-26")] == [101, 107]
    assert not list((landing / "behaviors").rglob(".*"))  # no temp files left behind


def test_taobao_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        import_taobao(tmp_path / "nope.csv", tmp_path / "landing")
