"""bench_vms.py's pure parts: arguments, statistics, the table and the doc's section."""

from __future__ import annotations

import pytest

from colo_lab.bench_table import (
    BEGIN,
    END,
    MEASURES,
    MODES,
    counts,
    median_figures,
    parse_args,
    pauses,
    percentile,
    rank,
    ratio,
    render,
    replace_section,
    round_order,
)


def test_defaults_run_the_built_modes_in_order() -> None:
    a = parse_args([])
    assert a.modes == ["direct", "colo-proxy", "qemu-compare", "remus"]
    assert a.remus_interval == 0.2
    assert (a.n, a.paced_n, a.remus_n, a.big_mb, a.write_doc) == (150, 100, 30, 64, "")


def test_default_counts_put_p99_below_the_slowest_request() -> None:
    # With 40 requests a row the p99 was the maximum: one outlier decided the row.
    a = parse_args([])
    for mode in ("direct", "colo-proxy", "qemu-compare"):
        c = counts(mode, a.n, a.paced_n, a.remus_n)
        assert rank(c.each, 99) < c.each and rank(c.paced, 99) < c.paced
    assert rank(40, 99) == 40 and rank(100, 99) == 99 and rank(150, 99) == 149


def test_remus_rows_are_capped_and_others_are_not() -> None:
    assert counts("colo-proxy", 150, 100, 30) == counts("direct", 150, 100, 30)
    c = counts("colo-proxy", 150, 100, 30)
    assert (c.each, c.paced) == (150, 100)
    r = counts("remus", 150, 100, 30)
    assert (r.each, r.paced) == (30, 15)
    small = counts("remus", 10, 4, 30)  # below the cap: as asked
    assert (small.each, small.paced) == (10, 4)
    assert counts("remus", 150, 100, 1).paced == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["--modes", "direct,bogus"], "unknown mode bogus"),
    (["--modes", "direct,direct"], "named twice"),
    (["--modes", "colo-proxy"], "needs direct"),
    (["-n", "0"], "-n must be at least 1"),
    (["--paced-n", "0"], "--paced-n must be at least 1"),
    (["--remus-n", "0"], "--remus-n must be at least 1"),
    (["--clients", "0"], "--clients must be at least 1"),
    (["--big-mb", "-1"], "--big-mb must be >= 0"),
    (["--remus-interval", "0"], "--remus-interval > 0"),
])
def test_bad_arguments_say_why(argv: list[str], says: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_percentile_is_a_measured_value() -> None:
    vals = [float(v) for v in range(1, 101)]
    assert percentile(vals, 50) == 50 and percentile(vals, 99) == 99
    assert percentile(vals, 100) == 100 and percentile(vals, 0) == 1
    assert percentile([3.0, 1.0, 2.0], 50) == 2  # unsorted input
    assert percentile([7.0], 99) == 7
    with pytest.raises(ValueError):
        percentile([], 50)


def test_pauses_pair_each_stop_with_the_next_resume() -> None:
    events = [("RESUME", 0.5), ("STOP", 1.0), ("RESUME", 1.05), ("SHUTDOWN", 1.1),
              ("STOP", 2.0), ("RESUME", 2.2), ("STOP", 3.0)]
    assert pauses(events) == pytest.approx([0.05, 0.2])
    assert pauses([]) == []


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == "1.50"
    assert ratio(None, 2.0) == ratio(3.0, None) == ratio(3.0, 0.0) == "-"


def test_table_has_every_measure_and_mode_with_ratios_to_direct() -> None:
    results: dict[str, dict[str, float | None]] = {
        "direct": {"new_p50": 20.0, "mb1": 10.0, "ckpt_rate": 0.0},
        "colo-proxy": {"new_p50": 30.0, "mb1": 5.0, "ckpt_rate": 0.5, "pause_ms": 45.0},
    }
    lines = render(results, MODES).splitlines()
    assert len(lines) == 2 + len(MEASURES)
    assert all(line.count("|") == 3 + len(MODES) for line in lines)
    row = {line.split(" | ")[0].strip("| "): line for line in lines}
    assert "| 20 | 30 (1.50x) | missing | missing |" in row["GET /, new connection, p50"]
    assert "| 10 | 5.0 (0.50x) |" in row["1 MB download (new connection, median)"]
    # Checkpoints are absolute: direct has none to divide by.
    assert "| 0.0 | 0.5 |" in row["checkpoints per second (whole run)"]
    assert "| - | 45 |" in row["PVM pause per checkpoint (mean)"]
    assert "| - | - | missing | missing |" in row["mixed load, concurrent clients"]


def test_doc_section_is_replaced_or_appended() -> None:
    doc = "# Benchmarks\n\nintro\n"
    once = replace_section(doc, "table 1\n")
    assert once == f"# Benchmarks\n\nintro\n\n{BEGIN}\ntable 1\n{END}\n"
    twice = replace_section(once + "after\n", "table 2")
    assert twice == f"# Benchmarks\n\nintro\n\n{BEGIN}\ntable 2\n{END}\nafter\n"


def test_rounds_alternate_their_order() -> None:
    # ABBA: a machine that gets busier during the run weighs on every mode alike.
    assert round_order(["direct", "colo-proxy"], 3) == [
        "direct", "colo-proxy", "colo-proxy", "direct", "direct", "colo-proxy"]
    assert round_order(["direct"], 1) == ["direct"]


def test_each_figure_is_the_median_of_its_rounds() -> None:
    runs: list[dict[str, float | None]] = [
        {"new_p50": 30.0, "pause_ms": None}, {"new_p50": 50.0, "pause_ms": 40.0},
        {"new_p50": 35.0, "pause_ms": None}]
    assert median_figures(runs) == {"new_p50": 35.0, "pause_ms": 40.0}
    assert median_figures([{"pause_ms": None}]) == {"pause_ms": None}


def test_rounds_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
