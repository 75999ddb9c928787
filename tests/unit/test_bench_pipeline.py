"""bench/pipeline_day.py's host accounting: what the machine's CPUs did while the day ran (no timing asserts)."""

from __future__ import annotations

from tests.bench_scripts import load_bench

pd_bench = load_bench("pipeline_day")


def test_host_cpu_splits_busy_idle_and_steal_seconds() -> None:
    tick = pd_bench.os.sysconf("SC_CLK_TCK")
    before = dict.fromkeys(pd_bench.HOST_STATES, 1000)
    # over the interval: 3 s user, 1 s system, 0.5 s softirq, 2 s idle, 1 s iowait, 4 s steal
    after = before | {"user": 1000 + 3 * tick, "system": 1000 + tick, "softirq": 1000 + tick // 2,
                      "idle": 1000 + 2 * tick, "iowait": 1000 + tick, "steal": 1000 + 4 * tick}
    assert pd_bench._host_cpu_s(before, after) == {"busy": 4.5, "idle": 3.0, "steal": 4.0}
    assert pd_bench._host_cpu_s(None, after) is None


def test_host_ticks_count_up_while_this_process_works() -> None:
    before = pd_bench._host_ticks()
    own = pd_bench._cpu_s()
    while pd_bench._cpu_s() - own < 0.2:  # burn 0.2 s of CPU
        pass
    spent = pd_bench._host_cpu_s(before, pd_bench._host_ticks())
    assert set(spent) == {"busy", "idle", "steal"}
    assert spent["busy"] >= 0.1  # at least most of what this loop burnt (ticks are 10 ms)
