"""bench_proxy.py's table: each path against direct, the proxies against the floors."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_proxy.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_proxy", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DIRECT_LAT = {"p50_us": 100.0, "p99_us": 200.0}


def _path(bps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"bps": bps, "lat": {"p50_us": p50, "p99_us": p99}}


def _proxied(bps: float, p50: float, p99: float) -> dict[str, Any]:
    status = {"checkpoint_requests": {}, "queue_overflows": 0,
              "fast_path": {"released": 7, "slow_pvm": 3, "slow_svm": 2, "lent": 4,
                            "handbacks_flags": 1, "handbacks_lag": 0}}
    return {**_path(bps, p50, p99), "hop": {"p50_us": p50 - 20, "p99_us": p99},
            "status": status, "answered": 0}


def test_floor_with_svm_has_throughput_and_the_proxy_a_ratio_to_it(bench: ModuleType) -> None:
    lines = bench.report(10e9, DIRECT_LAT, _path(7e9, 140, 260), _path(5e9, 160, 300),
                         [("", _proxied(4e9, 180, 400))])
    text = "\n".join(lines)
    svm_floor = lines.index(next(x for x in lines if "until the SVM has sent" in x))
    assert "floor      5.00 Gbit/s   ratio 0.50" in lines[svm_floor + 1]
    proxied = next(x for x in lines if x.startswith("throughput") and "proxied" in x)
    assert proxied.endswith("ratio 0.40   0.80 of the floor with the SVM")
    # added p50: proxy +80 us against the floor's +60 us
    assert "added p50 1.33x the floor with the SVM" in text
    assert "throughput 0.40 of direct (target >= 0.7; the floor with the SVM 0.50)" in text
    assert "flows lent 4, given back {'flags': 1}" in text


def test_without_floor_no_ratio_to_it(bench: ModuleType) -> None:
    lines = bench.report(10e9, DIRECT_LAT, None, None, [("--no-fast-path",
                                                         _proxied(2e9, 300, 900))])
    assert not any("floor" in x for x in lines)
    assert any(x.endswith("ratio 0.20") for x in lines)


def test_cpu_seconds_counts_a_process_and_the_machine(bench: ModuleType) -> None:
    before = bench.cpu_seconds({"me": os.getpid(), "gone": 2**22 + 1})
    sum(i * i for i in range(300_000))  # some CPU of our own
    after = bench.cpu_seconds({"me": os.getpid()})
    assert set(before) == {"me", "all CPUs"}  # a pid that does not exist is left out
    assert after["me"] >= before["me"] and after["all CPUs"] >= before["all CPUs"] > 0


def test_cpu_lines_go_with_their_paths(bench: ModuleType) -> None:
    low_svm = {**_path(5e9, 160, 300), "cpu": {"nfq_floor": 0.5, "all CPUs": 3.0}}
    run = {**_proxied(4e9, 180, 400), "cpu": {"primary proxy": 1.25, "all CPUs": 4.0}}
    lines = bench.report(10e9, DIRECT_LAT, None, low_svm, [("", run)])
    assert "cpu s/GiB floor: nfq_floor 0.50, all CPUs 3.00" in lines
    assert "cpu s/GiB proxied: primary proxy 1.25, all CPUs 4.00" in lines


def test_each_path_is_compared_with_the_direct_around_it(bench: ModuleType) -> None:
    # The machine halves its speed after the first direct: the floor and the proxy, each
    # measured after it, are compared with the directs measured beside them.
    d0 = {"bps": 20e9, "lat": {"p50_us": 100.0, "p99_us": 200.0}, "cpu": {}}
    d1 = {"bps": 10e9, "lat": {"p50_us": 140.0, "p99_us": 300.0}, "cpu": {}}
    d2 = {"bps": 10e9, "lat": {"p50_us": 160.0, "p99_us": 300.0}, "cpu": {}}
    directs = [d0]
    low_svm = bench.bracketed(_path(6e9, 200, 400), directs, d1)
    run = bench.bracketed(_proxied(7.5e9, 230, 500), directs, d2)
    assert [d["bps"] for d in directs] == [20e9, 10e9, 10e9]
    lines = bench.report(d0["bps"], d0["lat"], None, low_svm, [("", run)])
    text = "\n".join(lines)
    # floor: 6 against (20+10)/2 = 15 Gbit/s; proxy: 7.5 against 10 Gbit/s
    assert "direct   15.00 Gbit/s   floor      6.00 Gbit/s   ratio 0.40" in text
    assert "proxied    7.50 Gbit/s   ratio 0.75   1.88 of the floor with the SVM" in text
    # added p50: proxy 230 - 150 = +80 us, the floor 200 - 120 = +80 us
    assert "added p50 1.00x the floor with the SVM" in text
    assert "added p99 +200 us" in text
    assert "throughput 0.75 of direct (target >= 0.7; the floor with the SVM 0.40)" in text
    assert "direct measured 3 times" in bench.drift_line(directs)
    assert "10.00-20.00 Gbit/s, p50 100-160 us" in bench.drift_line(directs)
