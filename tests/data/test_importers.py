"""Importers: MovieLens in four layouts and Taobao UserBehavior.csv into the landing layout.

Fixture files are written by the tests themselves; the real MovieLens-100K is read from ../shared when
that folder is there.
"""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import recsys.data.importers as importers
from recsys.config import load_config
from recsys.data.importers import import_movielens, import_taobao
from recsys.ingest import ingest

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


def _write_ml1m(folder: Path, users: str, movies: str) -> Path:
    """An ML-1M release folder: RATINGS as ratings.dat, `users` and latin-1 `movies` in '::' form."""
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    (folder / "users.dat").write_text(users)
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def test_ml1m_double_colon_files(tmp_path: Path) -> None:
    folder = _write_ml1m(tmp_path / "ml-1m", "1::F::1::10::48067\n2::M::56::16::70072\n",
                         "10::Misérables, Les (1995)::Drama|Musical\n"
                         "20::Toy Story (1995)::Animation|Children's|Comedy\n30::Heat (1995)::Action\n")
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


# ------------------------------------------------------------------------------------------------
# The releases exactly as they ship: folder layouts, side files, encodings and quoting quirks
# ------------------------------------------------------------------------------------------------

def _behaviors(landing: Path) -> list[tuple]:
    """Every behaviour written, as (ds, user, item, behavior, ts, value), in file order."""
    return [(d, r["user_id"], r["item_id"], r["behavior"], r["ts"], r["value"])
            for d in _days(landing, "behaviors") for r in _partition(landing, "behaviors", d)]


def _categories(landing: Path) -> dict[int, str | None]:
    first = _days(landing, "items")[0]
    return {r["item_id"]: r["category"] for r in _partition(landing, "items", first)}


@pytest.fixture
def ml100k_zip(tmp_path: Path) -> Path:
    """ml-100k.zip unpacked: `ml-100k/` with every file the release ships (side files shortened)."""
    root = tmp_path / "download"
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    lines = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    (folder / "u.data").write_text(lines)
    for split in ("u1.base", "u1.test", "ua.base", "ua.test"):
        (folder / split).write_text(lines.splitlines(keepends=True)[0] if split.endswith("test") else lines)
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    items = [  # the real quirks: latin-1 accents, a '"' in an unquoted title, item 267 with empty fields
        f"10|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables|"
        f"{_genre_flags('Drama', 'Musical')}",
        f'20|"Great Performances" Toy Story (1995)|01-Jan-1995||http://x|{_genre_flags("Animation", "Comedy")}',
        f"30|unknown||||{_genre_flags('unknown')}"]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(importers.ML100K_GENRES)) + "\n")
    (folder / "u.occupation").write_text("administrator\nartist\ntechnician\n")
    (folder / "u.info").write_text("943 users\n1682 items\n100000 ratings\n")
    (folder / "README").write_text("SUMMARY & USAGE LICENSE\n=======\nu.data -- The full u data set\n")
    (folder / "allbut.pl").write_text("#!/usr/local/bin/perl\nif (@ARGV < 3) { exit 1; }\n")
    (folder / "mku.sh").write_text("#!/bin/sh\ntrap `rm -f tmp.$$; exit 1` 1 2 15\n")
    return root


@pytest.mark.parametrize("arg", ["download", "download/ml-100k", "download/ml-100k/u.data",
                                 "download/ml-100k/README", "download/ml-100k/u.genre"])
def test_ml100k_zip_layout_from_any_path(ml100k_zip: Path, tmp_path: Path, arg: str) -> None:
    landing = tmp_path / "landing"
    summary = import_movielens(tmp_path / arg, landing)
    assert summary.source_format == "ml-100k"
    _check_ratings(landing, summary)
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == "Misérables, Les (1995)" and items[10]["category"] == "Drama"
    assert items[20]["title"] == '"Great Performances" Toy Story (1995)'
    assert (items[30]["title"], items[30]["category"]) == ("unknown", "unknown")
    assert [r["occupation"] for r in _partition(landing, "users", "1998-01-01")] == ["technician", "other"]


def test_ml100k_split_file_imports_that_split(ml100k_zip: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = import_movielens(ml100k_zip / "ml-100k" / "ua.test", landing)
    assert summary.rows_in == summary.rows_written == 1 and summary.days == ["1998-01-01"]
    assert _days(landing, "items") == ["1998-01-01"]


def test_folder_with_two_releases_names_them(ml100k_zip: Path, tmp_path: Path) -> None:
    other = ml100k_zip / "ml-latest-small"
    other.mkdir()
    (other / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(ValueError, match="2 MovieLens releases.*ml-100k, ml-latest-small"):
        import_movielens(ml100k_zip, tmp_path / "landing")


def test_original_ml100k_equals_atomic_files(ml100k_zip: Path, tmp_path: Path) -> None:
    atomic = tmp_path / "atomic"
    atomic.mkdir()
    (atomic / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (atomic / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\t"
                                         "zip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n")
    (atomic / "ml-100k.item").write_text(  # recbole's own spellings: no year in titles, 'unkonwn'
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tMisérables, Les\t1995\tDrama Musical\n20\tGreat Performances Toy Story\t1995\tAnimation Comedy\n"
        "30\tunkonwn\tunkonwn\tunknown\n", encoding="utf-8")
    original, from_atomic = tmp_path / "original", tmp_path / "from_atomic"
    import_movielens(ml100k_zip, original)
    import_movielens(atomic, from_atomic)
    assert _behaviors(original) == _behaviors(from_atomic) and len(_behaviors(original)) == 4
    assert _categories(original) == _categories(from_atomic) == {10: "Drama", 20: "Animation", 30: "unknown"}
    assert _partition(original, "users", "1998-01-01") == _partition(from_atomic, "users", "1998-01-01")


def test_ml1m_release_folder(tmp_path: Path) -> None:
    folder = _write_ml1m(tmp_path / "ml-1m", "1::F::1::10::48067\n2::M::56::16::98107-2117\n",
                         "10::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
                         "20::Misérables, Les (1995)::Drama|Musical\n"
                         "30::Children's Crusade (1995)::Children's|Drama\n")
    (folder / "README").write_text("These files contain 1,000,209 anonymous ratings\n")
    landing = tmp_path / "landing"
    summary = import_movielens(tmp_path, landing)   # the folder ml-1m.zip was unpacked into
    assert summary.source_format == "ml-1m"
    _check_ratings(landing, summary)
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == "Star Wars: Episode IV - A New Hope (1977)" and items[10]["category"] == "Action"
    assert items[20]["title"] == "Misérables, Les (1995)" and items[30]["category"] == "Children's"
    assert [r["age"] for r in _partition(landing, "users", "1998-01-01")] == [1, 56]


def test_ml1m_single_colon_is_rejected_with_its_row(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::4::883699199\n2:10::5::883699200::\n")
    with pytest.raises(ValueError, match="ratings.dat"):
        import_movielens(tmp_path, tmp_path / "landing")
    (tmp_path / "ratings.dat").write_text("1::10::4::883699199\n2:x:10::5::883699200\n")
    with pytest.raises(ValueError, match=r"data row 2, column _sep1: 'x' is not empty"):
        import_movielens(tmp_path, tmp_path / "landing")


def _csv_release(folder: Path, ratings: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"""Great Performances"" Cats (1998)",Musical\n'
        '20,"Misérables, Les (1995)",Drama|War\n'
        "30,Pirates of Silicon Valley (1999),(no genres listed)\n", encoding="utf-8")
    (folder / "tags.csv").write_text('userId,movieId,tag,timestamp\n2,60756,"Tom Hardy, boxing",1445714994\n')
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,\n")
    (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n1,1,0.02875\n")
    (folder / "genome-tags.csv").write_text("tagId,tag\n1,007\n")
    (folder / "README.txt").write_text("Summary\n=======\n")
    return folder


HALF_STARS = "".join(f"{u},{i},{r - 0.5},{t}\n" for u, i, r, t in RATINGS)


@pytest.mark.parametrize("arg", ["ml-25m", "ml-25m/tags.csv", "ml-25m/genome-scores.csv", "."])
def test_csv_release_quirks(tmp_path: Path, arg: str) -> None:
    _csv_release(tmp_path / "dl" / "ml-25m", HALF_STARS.rstrip("\n"))   # the last line without a break
    landing = tmp_path / "landing"
    summary = import_movielens(tmp_path / "dl" / arg, landing)
    assert summary.source_format == "ml-csv" and summary.rows_in == summary.rows_written == 4
    assert [r["value"] for r in _partition(landing, "behaviors", "1998-01-02")] == [4.5, 2.5]
    items = {r["item_id"]: r for r in _partition(landing, "items", "1998-01-01")}
    assert items[10]["title"] == '"Great Performances" Cats (1998)' and items[10]["category"] == "Musical"
    assert items[20]["title"] == "Misérables, Les (1995)" and items[20]["category"] == "Drama"
    assert items[30]["category"] is None


def test_csv_ratings_read_in_many_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers, "RATINGS_BLOCK_BYTES", 256)   # ~10 lines a batch
    rows = [(u, 100 + u % 7, 0.5 + u % 10 / 2, T_0101_2359 - u * 3600) for u in range(1, 301)]
    folder = _csv_release(tmp_path / "ml-latest-small", "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    landing = tmp_path / "landing"
    summary = import_movielens(folder, landing)
    assert summary.rows_in == summary.rows_written == 300 and summary.users == 300
    written = sorted((u, i, v, ts) for _, u, i, _, ts, v in _behaviors(landing))
    assert written == [(u, i, r, datetime.fromtimestamp(t, UTC).replace(tzinfo=None)) for u, i, r, t in rows]


def test_bad_rating_value_names_row_and_column(tmp_path: Path) -> None:
    folder = _csv_release(tmp_path / "ml-latest-small", "1,10,4.0,883699199\n2,abc,5.0,883699200\n")
    with pytest.raises(ValueError, match=r"ratings.csv.*data row 2, column movieId: 'abc' is not an integer"):
        import_movielens(folder, tmp_path / "landing")
    assert not (tmp_path / "landing").exists()


def test_summary_prints_days_as_a_range(ml100k: Path, tmp_path: Path) -> None:
    shown = dict(import_movielens(ml100k, tmp_path / "landing").__rich_repr__())
    assert shown["days"] == "1998-01-01 .. 1998-01-05 (3 days)" and shown["rows_written"] == 4


def test_ml100k_import_then_ingest(ml100k_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    cfg = load_config()
    import_movielens(ml100k_zip, cfg.paths.landing)
    first, second = ingest(cfg, "1998-01-01").counts, ingest(cfg, "1998-01-02").counts
    assert (first["behaviors"].accepted, first["items"].accepted, first["users"].accepted) == (1, 3, 2)
    assert (second["behaviors"].rows_in, second["behaviors"].accepted, second["behaviors"].rejected) == (2, 2, 0)
    assert second["items"].rows_in == 0   # the snapshots live in the first day only


def test_taobao_real_file_quirks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CRLF line ends, timestamps of 1970, negative, 2037 and 13 digits, a line longer than a block,
    no line break after the last line."""
    monkeypatch.setattr(importers, "TAOBAO_BLOCK_BYTES", 48)
    lines = [b"1,100,5,pv,1511539200", b"1,101,5,pv,0", b"1,102,5,pv,-2134949234", b"1,103,5,buy,2122300000",
             b"1,104,5,pv,1511539200000", b"2,105,6,cart,1511600000," + b"x" * 100, b"2,106,6,fav,1512316799"]
    path = tmp_path / "UserBehavior.csv"
    path.write_bytes(b"\r\n".join(lines))
    landing = tmp_path / "landing"
    summary = import_taobao(path, landing)
    assert (summary.rows_in, summary.rows_written, summary.rows_rejected) == (7, 2, 5)
    assert summary.days == ["2017-11-25", "2017-12-03"]
    rejected = {int(r["source_line"]): (r["reason"], r["record"]) for r in _read_rejected(landing)}
    assert rejected == {2: ("outside_window", "1,101,5,pv,0"), 3: ("outside_window", "1,102,5,pv,-2134949234"),
                        4: ("outside_window", "1,103,5,buy,2122300000"),
                        5: ("outside_window", "1,104,5,pv,1511539200000"),
                        6: ("malformed_row (expected 5 fields, got 6)", lines[5].decode())}
    assert [r["behavior"] for r in _partition(landing, "behaviors", "2017-12-03")] == ["fav"]


def test_taobao_refuses_a_file_without_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers, "TAOBAO_BLOCK_BYTES", 16)
    monkeypatch.setattr(importers, "TAOBAO_MAX_LINE_BYTES", 64)
    path = tmp_path / "UserBehavior.csv"
    path.write_bytes(b"1,100,5,pv,1511539200\n" + bytes(range(11, 255)) * 2)
    with pytest.raises(ValueError, match="not a UserBehavior.csv"):
        import_taobao(path, tmp_path / "landing")
    assert not list((tmp_path / "landing").rglob("*.parquet"))   # nothing half-written


def test_taobao_import_then_ingest_beijing_days(taobao_file: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    cfg = load_config(overrides={"ingest.day_timezone": "Asia/Shanghai"})
    import_taobao(taobao_file, cfg.paths.landing)
    first, second = ingest(cfg, "2017-11-25").counts, ingest(cfg, "2017-11-26").counts
    assert (first["behaviors"].rows_in, first["behaviors"].accepted, first["behaviors"].rejected) == (2, 2, 0)
    assert (second["behaviors"].rows_in, second["behaviors"].accepted, second["behaviors"].rejected) == (2, 2, 0)
    assert first["items"].accepted == 4


@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_ratings_with_windows_or_old_mac_line_ends(ml100k: Path, tmp_path: Path, line_end: str) -> None:
    (ml100k / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}{line_end}" for u, i, r, t in RATINGS),
                                   newline="")
    landing = tmp_path / "landing"
    _check_ratings(landing, import_movielens(ml100k, landing))
