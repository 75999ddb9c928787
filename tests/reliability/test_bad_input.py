"""A corpus of bad landing files: each gets its exact reject reason (file, line, rule) or a run error that
names the file and the rule; accepted + rejected = input; a failed run leaves every table as it was.

tests/data/test_ingest.py covers the basic line rules (null / negative / non-integer ids, unknown
behaviours, ts outside ds, ...); this corpus adds what real feeds do besides: byte-order marks, CRLF,
quoted line breaks, reordered and extra columns, huge values, wrong JSON and Parquet types, NaN,
future and millisecond timestamps, duplicates across files, broken Parquet, empty partitions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import Config
from recsys.ingest import IngestError, ingest, partition_dir
from tests.reliability.helpers import config_for, digest, rows

DS, DAY0 = "2024-01-01", "2023-12-31"
HEADER = "user_id,item_id,behavior,ts,value,device\n"
BASE = [f"{u},{u + 100},view,2024-01-01T{u % 24:02d}:00:00,,web\n" for u in range(1, 21)]
Content = bytes | Callable[[Path], None]


def csv(*lines: str, header: str = HEADER) -> bytes:
    return (header + "".join(lines)).encode()


def parquet(**columns: pa.Array | list) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(columns), path)


def truncated_parquet(path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "user_id": list(range(200)),
                "item_id": [1] * 200,
                "behavior": ["view"] * 200,
                "ts": ["2024-01-01T01:00:00"] * 200,
            }
        ),
        buf,
    )
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a copy interrupted half way


TS = "2024-01-01T05:00:00"


@dataclass(frozen=True)
class Case:
    """Files (entity/name -> content) added to ds's landing; expected rejects or the run error."""

    id: str
    files: dict[str, Content]
    inputs: dict[str, int] = field(default_factory=dict)  # data records per entity in `files`
    rejects: dict[tuple[str, int], str] = field(default_factory=dict)  # (entity/name, line) -> reason
    error: tuple[str, ...] = ()  # substrings of the IngestError ({dir}, {file})
    base: bool = True  # keep the 20 good behaviours of base.csv


CASES = [
    # ---------------------------------------------------------------- CSV lines and headers
    Case(
        "csv-byte-order-mark",
        {"behaviors/bom.csv": b"\xef\xbb\xbf" + csv(f"1,2,view,{TS},,\n", f"x,2,view,{TS},,\n")},
        {"behaviors": 2},
        {("behaviors/bom.csv", 3): "user_id_not_integer"},
    ),
    Case(
        "csv-crlf-line-ends",
        {"behaviors/crlf.csv": csv(f"1,2,view,{TS},,\r\n", "2,2,view,noon,,\r\n", header=HEADER.replace("\n", "\r\n"))},
        {"behaviors": 2},
        {("behaviors/crlf.csv", 3): "ts_unparseable"},
    ),
    Case(
        "csv-quoted-line-break",
        {"behaviors/q.csv": csv(f'1,2,view,{TS},,"we\nb"\n', "2,2,view,noon,,\n")},
        {"behaviors": 2},
        {("behaviors/q.csv", 4): "ts_unparseable"},
    ),  # the bad record starts on line 4
    Case(
        "csv-blank-line",
        {"behaviors/b.csv": csv(f"1,2,view,{TS},,\n", "\n", "2,2,view,noon,,\n")},
        {"behaviors": 3},
        {("behaviors/b.csv", 3): "empty_row", ("behaviors/b.csv", 4): "ts_unparseable"},
    ),
    Case(
        "csv-extra-column",
        {
            "behaviors/x.csv": csv(
                f"1,2,view,{TS},,web,spring-sale\n",
                f"2,3,cart,{TS},,ios\n",
                header="user_id,item_id,behavior,ts,value,device,campaign\n",
            )
        },
        {"behaviors": 2},
        {("behaviors/x.csv", 3): "malformed_row (expected 7 fields, got 6)"},
    ),
    Case(
        "csv-reordered-columns",
        {"behaviors/r.csv": csv(f"{TS},view,2,1\n", f"{TS},buy,-2,1\n", header="ts,behavior,item_id,user_id\n")},
        {"behaviors": 2},
        {("behaviors/r.csv", 3): "item_id_negative"},
    ),
    Case(
        "csv-semicolon-delimiter",
        {"behaviors/s.csv": csv(f"1;2;view;{TS};;\n", header=HEADER.replace(",", ";"))},
        error=(
            "{file}",
            "missing required column(s) ['user_id', 'item_id', 'behavior', 'ts']",
            "rule: required_columns",
        ),
    ),
    Case(
        "csv-non-utf8-header",
        {"behaviors/h.csv": b"user_id,item_id,beh\xffavior,ts\n1,2,view,2024-01-01T05:00:00\n"},
        error=("{file}", "missing required column(s) ['behavior']", "rule: required_columns"),
    ),
    Case("csv-binary-garbage", {"behaviors/g.csv": bytes(range(256)) * 4}, error=("{file}", "rule: required_columns")),
    # ---------------------------------------------------------------- timestamps
    Case(
        "ts-in-the-future",
        {"behaviors/f.csv": csv("1,2,view,2099-06-01T00:00:00,,\n", "1,2,view,9999-12-31,,\n")},
        {"behaviors": 2},
        {("behaviors/f.csv", 2): "ts_outside_ds", ("behaviors/f.csv", 3): "ts_outside_ds"},
    ),
    Case(
        "ts-unix-milliseconds",
        {"behaviors/m.csv": csv("1,2,view,1704067200000,,\n", "1,3,view,1704067200,,\n")},
        {"behaviors": 2},
        {("behaviors/m.csv", 2): "ts_outside_ds"},
    ),
    Case(
        "ts-not-a-date",
        {
            "behaviors/d.csv": csv(
                "1,2,view,2024-02-30T00:00:00,,\n",
                "1,2,view,1e400,,\n",
                "1,2,view,infinity,,\n",
                "1,2,view,2024-01-01T25:00:00,,\n",
            )
        },
        {"behaviors": 4},
        {
            ("behaviors/d.csv", 2): "ts_unparseable",
            ("behaviors/d.csv", 3): "ts_unparseable",
            ("behaviors/d.csv", 4): "ts_outside_ds",
            ("behaviors/d.csv", 5): "ts_unparseable",
        },
    ),
    # ---------------------------------------------------------------- numbers
    Case(
        "value-nan-and-infinity",
        {
            "behaviors/v.csv": csv(
                f"1,2,rating,{TS},NaN,\n",
                f"1,3,rating,{TS},inf,\n",
                f"1,4,rating,{TS},1e999,\n",
                f"1,5,rating,{TS},4.5,\n",
            )
        },
        {"behaviors": 4},
        {
            ("behaviors/v.csv", 2): "value_not_finite",
            ("behaviors/v.csv", 3): "value_not_finite",
            ("behaviors/v.csv", 4): "value_not_finite",
        },
    ),
    Case(
        "ids-hex-exponent-spaces",
        {"behaviors/i.csv": csv(f"0x1F,2,view,{TS},,\n", f"1e3,2,view,{TS},,\n", f" 7 ,\t8\t,view,{TS},,\n")},
        {"behaviors": 3},
        {("behaviors/i.csv", 2): "user_id_not_integer", ("behaviors/i.csv", 3): "user_id_not_integer"},
    ),
    Case(
        "ids-at-the-int64-edge",
        {"behaviors/e.csv": csv(f"9223372036854775807,2,view,{TS},,\n", f"1,9223372036854775808,view,{TS},,\n")},
        {"behaviors": 2},
        {("behaviors/e.csv", 3): "item_id_not_integer"},
    ),
    Case(
        "huge-strings",
        {"behaviors/big.csv": csv(f"1,2,view,{TS},,{'d' * 2_000_000}\n", f"1,3,{'v' * 100_000},{TS},,\n")},
        {"behaviors": 2},
        {("behaviors/big.csv", 3): "behavior_unknown"},
    ),
    Case(
        "behaviour-case-and-spaces",
        {"behaviors/c.csv": csv(f"1,2, VIEW ,{TS},,\n", f"1,3,Viewed,{TS},,\n")},
        {"behaviors": 2},
        {("behaviors/c.csv", 3): "behavior_unknown"},
    ),
    # ---------------------------------------------------------------- JSON lines
    Case(
        "jsonl-wrong-types",
        {
            "behaviors/w.jsonl": (
                b'{"user_id": "12", "item_id": 2, "behavior": "view", "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": 12.5, "item_id": 2, "behavior": "view", "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": true, "item_id": 2, "behavior": "view", "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": {"id": 1}, "item_id": 2, "behavior": "view", "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": 3, "item_id": [2], "behavior": "view", "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": 3, "item_id": 2, "behavior": 5, "ts": "2024-01-01T05:00:00"}\n'
                b'{"user_id": 3, "item_id": 2, "behavior": "view", "ts": 1704085200}\n'
                b'{"user_id": null, "item_id": 2, "behavior": "view", "ts": 1704085200}\n'
            )
        },
        {"behaviors": 8},
        {
            ("behaviors/w.jsonl", 2): "user_id_not_integer",
            ("behaviors/w.jsonl", 3): "user_id_not_integer",
            ("behaviors/w.jsonl", 4): "user_id_not_integer",
            ("behaviors/w.jsonl", 5): "item_id_not_integer",
            ("behaviors/w.jsonl", 6): "behavior_unknown",
            ("behaviors/w.jsonl", 8): "user_id_null",
        },
    ),
    Case(
        "jsonl-extra-keys-missing-optional",
        {
            "behaviors/k.jsonl": (
                b'{"user_id": 1, "item_id": 2, "behavior": "buy", "ts": "2024-01-01T05:00:00", "coupon": "X1"}\n'
                b'{"item_id": 2, "behavior": "buy", "ts": "2024-01-01T05:00:00", "uid": 1}\n'
            )
        },
        {"behaviors": 2},
        {("behaviors/k.jsonl", 2): "user_id_null"},
    ),
    # ---------------------------------------------------------------- Parquet types
    Case(
        "parquet-string-and-null-ids",
        {
            "behaviors/p.parquet": parquet(
                user_id=["1", "abc", None], item_id=[2, 2, 2], behavior=["view"] * 3, ts=[TS] * 3
            )
        },
        {"behaviors": 3},
        {("behaviors/p.parquet", 2): "user_id_not_integer", ("behaviors/p.parquet", 3): "user_id_null"},
    ),
    Case(
        "parquet-float-ids",
        {"behaviors/p.parquet": parquet(user_id=[1.5, 3.0], item_id=[2, 2], behavior=["view"] * 2, ts=[TS] * 2)},
        {"behaviors": 2},
        {("behaviors/p.parquet", 1): "user_id_not_integer"},
    ),
    Case(
        "parquet-uint64-beyond-int64",
        {
            "behaviors/p.parquet": parquet(
                user_id=pa.array([2**63 + 5, 4], pa.uint64()), item_id=[2, 2], behavior=["view"] * 2, ts=[TS] * 2
            )
        },
        {"behaviors": 2},
        {("behaviors/p.parquet", 1): "user_id_not_integer"},
    ),
    Case(
        "parquet-integer-timestamps",
        {
            "behaviors/p.parquet": parquet(
                user_id=[1, 2], item_id=[2, 2], behavior=["view"] * 2, ts=[1704085200, 1704085200000]
            )
        },
        {"behaviors": 2},
        {("behaviors/p.parquet", 2): "ts_outside_ds"},
    ),
    Case(
        "parquet-nested-column",
        {"behaviors/n.parquet": parquet(user_id=[1], item_id=[2], behavior=[["view"]], ts=[TS])},
        error=("{file}", "column behavior has type list<element: string>", "rule: column_type"),
    ),
    Case(
        "parquet-truncated",
        {"behaviors/t.parquet": truncated_parquet},
        error=("{file}", "unreadable file (rule: readable_file)", "magic bytes not found"),
    ),
    Case(
        "parquet-zero-bytes",
        {"behaviors/z.parquet": b""},
        error=("{file}", "unreadable file (rule: readable_file)", "size is 0 bytes"),
    ),
    # ---------------------------------------------------------------- duplicates
    Case(
        "duplicate-event-across-files",
        {
            "behaviors/a.csv": csv(f"1,2,view,{TS},,\n"),
            "behaviors/b.jsonl": b'{"user_id": 1, "item_id": 2, "behavior": "view", "ts": "2024-01-01T05:00:00Z"}\n',
        },
        {"behaviors": 2},
        {("behaviors/b.jsonl", 1): "duplicate_event"},
    ),  # same instant, other notation
    # ---------------------------------------------------------------- snapshots
    Case(
        "user-snapshot-rules",
        {
            "users/u.csv": csv(
                "1,200,F,Berlin,\n",
                "2,thirty,M,,\n",
                "3,-1,F,,\n",
                ",30,F,,\n",
                "4,30,F,Bonn,nurse\n",
                header="user_id,age,gender,city,occupation\n",
            )
        },
        {"users": 5},
        {
            ("users/u.csv", 2): "age_out_of_range",
            ("users/u.csv", 3): "age_not_integer",
            ("users/u.csv", 4): "age_out_of_range",
            ("users/u.csv", 5): "user_id_null",
        },
    ),
    Case(
        "item-snapshot-rules",
        {
            "items/i.csv": b"item_id,category,price,title\n1,shoes,NaN,a\n2,shoes,-3,b\n"
            b"3,shoes,cheap,c\n4,shoes,9.5,caf\xe9\n5,shoes,9.5,ok\n"
        },
        {"items": 5},
        {
            ("items/i.csv", 2): "price_not_finite",
            ("items/i.csv", 3): "price_negative",
            ("items/i.csv", 4): "price_not_numeric",
            ("items/i.csv", 5): "invalid_utf8 (column title)",
        },
    ),
    Case(
        "user-snapshot-without-id-column",
        {"users/u.csv": b"uid,age\n1,30\n"},
        error=("{file}", "missing required column(s) ['user_id']", "rule: required_columns"),
    ),
    # ---------------------------------------------------------------- empty things
    Case("empty-file-next-to-good-ones", {"behaviors/z.csv": b""}),
    Case(
        "only-an-empty-file",
        {"behaviors/z.csv": b""},
        base=False,
        error=("{dir}", "files hold no rows (rule: partition_not_empty)"),
    ),
    Case(
        "only-a-header",
        {"behaviors/h.csv": csv()},
        base=False,
        error=("{dir}", "files hold no rows (rule: partition_not_empty)"),
    ),
    Case(
        "parquet-without-rows",
        {
            "behaviors/e.parquet": parquet(
                user_id=pa.array([], pa.int64()),
                item_id=pa.array([], pa.int64()),
                behavior=pa.array([], pa.string()),
                ts=pa.array([], pa.string()),
            )
        },
        base=False,
        error=("{dir}", "rule: partition_not_empty"),
    ),
    Case(
        "landing-folder-without-data-files",
        {
            "behaviors/.part-0.csv.tmp": csv(f"1,2,view,{TS},,\n"),
            "behaviors/_SUCCESS": b"",
            "behaviors/notes.txt": b"see ticket 12\n",
        },
        base=False,
        error=("{dir}", "no landing files for ds=2024-01-01 (rule: partition_present"),
    ),
]


def landing(cfg: Config, entity: str, ds: str = DS) -> Path:
    folder = partition_dir(cfg.paths.landing, entity, ds)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write(cfg: Config, key: str, content: Content) -> Path:
    entity, name = key.split("/")
    path = landing(cfg, entity) / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A warehouse holding a healthy DAY0 and a healthy first version of DS (base.csv only)."""
    cfg = config_for(tmp_path, {"ingest.max_reject_rate": 1.0})  # the reject-rate gate: tests/data
    (landing(cfg, "behaviors", DAY0) / "day0.csv").write_text(HEADER + "".join(BASE).replace(DS, DAY0))
    (landing(cfg, "users", DAY0) / "u.csv").write_text("user_id,age,gender,city,occupation\n1,30,F,Berlin,nurse\n")
    ingest(cfg, DAY0)
    (landing(cfg, "behaviors") / "base.csv").write_text(HEADER + "".join(BASE))
    ingest(cfg, DS)
    return cfg


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(cfg: Config, case: Case) -> None:
    before = digest(cfg.paths.warehouse)
    if not case.base:
        (landing(cfg, "behaviors") / "base.csv").unlink()
    paths = {key: write(cfg, key, content) for key, content in case.files.items()}
    if case.error:
        _assert_fails_cleanly(cfg, case, paths, before)
    else:
        _assert_reconciled(cfg, case)


def _assert_fails_cleanly(cfg: Config, case: Case, paths: dict[str, Path], before: dict) -> None:
    with pytest.raises(IngestError) as err:
        ingest(cfg, DS)
    message = str(err.value)
    first = next(iter(paths.values()))
    for part in case.error:
        assert part.format(file=first, dir=first.parent) in message, message
    assert digest(cfg.paths.warehouse) == before  # every table, DS's earlier partition included


def _assert_reconciled(cfg: Config, case: Case) -> None:
    result = ingest(cfg, DS)
    got = {
        (f"{e}/{Path(f).name}", line): reason
        for e, f, line, reason in rows(
            cfg.paths.warehouse,
            "SELECT entity, source_file, source_line, reason FROM raw.rejected_rows WHERE ds = ?",
            [DS],
        )
    }
    assert got == case.rejects
    inputs = {"behaviors": len(BASE), **{e: 0 for e in ("users", "items")}}
    for entity, n in case.inputs.items():
        inputs[entity] += n
    for entity, c in result.counts.items():
        rejected = sum(1 for (key, _) in case.rejects if key.startswith(entity + "/"))
        assert (c.rows_in, c.accepted, c.rejected) == (inputs[entity], inputs[entity] - rejected, rejected), entity
        stored = rows(cfg.paths.warehouse, f"SELECT count(*) FROM raw.{entity} WHERE ds = ?", [DS])[0][0]
        assert stored == c.accepted  # accepted + rejected = input, and the accepted ones are all there
    per_file = rows(
        cfg.paths.warehouse,
        "SELECT coalesce(sum(rows_in), 0), coalesce(sum(rows_accepted + rows_rejected), 0) "
        "FROM raw.ingest_files WHERE ds = ?",
        [DS],
    )[0]
    assert per_file[0] == per_file[1] == sum(inputs.values())


def test_values_survive_intact(cfg: Config) -> None:
    """Huge strings, quoted line breaks, BOM files and reordered columns arrive with their exact values."""
    write(cfg, "behaviors/big.csv", csv(f"1,3,view,{TS},,{'d' * 2_000_000}\n"))
    write(cfg, "behaviors/q.csv", csv(f'1,4,view,{TS},,"we\nb"\n'))
    write(cfg, "behaviors/bom.csv", b"\xef\xbb\xbf" + csv(f"1,5,view,{TS},,bom\n"))
    write(cfg, "behaviors/r.csv", csv(f"{TS},cart,6,1\n", header="ts,behavior,item_id,user_id\n"))
    write(cfg, "behaviors/e.csv", csv(f"9223372036854775807,7,view,{TS},,\n"))
    ingest(cfg, DS)
    got = dict(
        rows(
            cfg.paths.warehouse,
            "SELECT item_id, (user_id, behavior, ts::VARCHAR, length(device), device) "
            "FROM raw.behaviors WHERE ds = ? AND item_id < 100",
            [DS],
        )
    )
    assert got[3][3] == 2_000_000
    assert got[4][4] == "we\nb" and got[5][4] == "bom" and got[6][:2] == (1, "cart")
    assert got[7][0] == 9223372036854775807


def test_rejected_record_keeps_what_the_file_held(cfg: Config) -> None:
    """A non-UTF-8 cell rejects its row, and the record shows the text (bad bytes as U+FFFD), not NULL."""
    write(cfg, "items/i.csv", b"item_id,title\n4,caf\xe9 cr\xe8me\n")
    ingest(cfg, DS)
    [(reason, record)] = rows(cfg.paths.warehouse, "SELECT reason, record FROM raw.rejected_rows WHERE ds = ?", [DS])
    assert reason == "invalid_utf8 (column title)" and "caf\ufffd cr\ufffdme" in record


def test_user_snapshot_contradicting_the_previous_day(cfg: Config) -> None:
    """Day 0 says user 1 is 30, F, Berlin; DS says 31, M, Paris. Snapshots are full or changed rows, so
    both are kept, each in its own ds partition (the marts use the latest with snapshot ds <= ds), and
    rerunning either day never rewrites the other."""
    write(cfg, "users/u.csv", b"user_id,age,gender,city,occupation\n1,31,M,Paris,nurse\n")
    ingest(cfg, DS)
    day0 = rows(cfg.paths.warehouse, "SELECT * FROM raw.users WHERE ds = ?", [DAY0])
    ingest(cfg, DAY0)
    ingest(cfg, DS)
    assert rows(cfg.paths.warehouse, "SELECT ds::VARCHAR, user_id, age, gender, city FROM raw.users ORDER BY ds") == [
        (DAY0, 1, 30, "F", "Berlin"),
        (DS, 1, 31, "M", "Paris"),
    ]
    assert rows(cfg.paths.warehouse, "SELECT * FROM raw.users WHERE ds = ?", [DAY0]) == day0
    assert rows(cfg.paths.warehouse, "SELECT count(*) FROM raw.rejected_rows WHERE entity = 'users'") == [(0,)]
