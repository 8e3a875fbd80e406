"""The build steps' progress: ninja's status lines in, lines to show out (issue 17)."""

from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import pytest

from colo_lab.build_progress import NinjaStatus, Progress, Show, parse_ninja, run_logged, short
from colo_lab.errors import LabError


def _ninja(n: int, total: int, obj: str = "x.c.o") -> bytes:
    return f"[{n}/{total}] Compiling C object {obj}\n".encode()


def test_ninja_status_lines_are_read_and_others_are_not() -> None:
    assert parse_ninja("[312/1393] Compiling C object libqemuutil.a.p/util_module.c.o") == \
        NinjaStatus(312, 1393, "Compiling C object libqemuutil.a.p/util_module.c.o")
    assert parse_ninja("[1393/1393] Linking target qemu-system-x86_64\r") == \
        NinjaStatus(1393, 1393, "Linking target qemu-system-x86_64")
    for other in ("../util/foo.c:12:3: warning: unused [-Wunused]", "[1/0] nothing",
                  "[5/4] past the end", "ninja: no work to do.", "", "[a/b] x"):
        assert parse_ninja(other) is None, other


def test_short_lines_say_how_far_a_build_is() -> None:
    assert short("[312/1393] Compiling C object libqemuutil.a.p/util_module.c.o") == \
        "[312/1393] libqemuutil.a.p/util_module.c.o"
    assert short("gcc -O2 -fPIC -c -o xc_altp2m.opic xc_altp2m.c") == "compiled xc_altp2m.opic"
    assert short("I: Unpacking the base system...") == "I: Unpacking the base system..."


def test_not_a_terminal_a_line_every_five_percent() -> None:
    p = Progress(0.0, tty=False)
    shown = []
    # 200 edges, one every 0.01 s: 2 s in all, so only the percent steps show.
    for n in range(1, 201):
        shown += p.feed(_ninja(n, 200), n * 0.01)
    assert [s.text.split()[0] for s in shown] == [f"[{n}/200]" for n in range(10, 201, 10)]
    assert not any(s.in_place for s in shown)
    assert shown[-1].text.startswith("[200/200] 100 %     2 s")


def test_not_a_terminal_a_slow_build_shows_a_line_every_ten_seconds() -> None:
    p = Progress(0.0, tty=False)
    # 1000 edges, one every 2 s: 0.1 % each, so the clock makes the lines.
    shown = [(n, s) for n in range(1, 31) for s in p.feed(_ninja(n, 1000), n * 2.0)]
    assert [n for n, _ in shown] == [5, 10, 15, 20, 25, 30]


def test_split_lines_and_noise_between_status_lines() -> None:
    p = Progress(0.0, tty=False, every_pct=50)
    assert p.feed(b"[1/4] Compiling C obj", 0.1) == []
    assert p.feed(b"ect a.c.o\nwarning: something\n[2/4] Com", 0.2) == []
    got = p.feed(b"piling C object b.c.o\n", 0.3)
    assert [s.text for s in got] == ["[2/4]  50 %     0 s  b.c.o"]
    assert p.feed(b"[3/4] Compiling C object c.c.o\n", 0.4) == []
    assert [s.text for s in p.feed(b"[4/4] Linking target qemu\n", 0.5)] == [
        "[4/4] 100 %     0 s  qemu"]


def test_on_a_terminal_one_line_rewritten_at_most_four_times_a_second() -> None:
    p = Progress(0.0, tty=True, tty_every=0.25)
    shown = []
    for n in range(1, 101):  # an edge every 1/16 s (exact in binary)
        shown += p.feed(_ninja(n, 100), n / 16)
    assert all(s.in_place for s in shown)
    assert [s.text.split()[0] for s in shown] == [f"[{n}/100]" for n in range(4, 101, 4)]


def test_output_without_a_total_shows_its_latest_line_when_quiet() -> None:
    p = Progress(0.0, tty=False)
    assert p.feed(b"gcc -c -o a.o a.c\n", 5.0) == []
    assert p.feed(b"gcc -c -o b.o b.c\n", 19.0) == []
    assert p.tick(21.0) == [Show("  21 s  compiled b.o")]
    assert p.tick(30.0) == []


@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja not installed")
def test_a_real_ninja_build_shows_its_progress(tmp_path: Path) -> None:
    # ninja's own output, not a copy of it: 40 edges, not on a terminal.
    rules = "rule touch\n  command = touch $out\n  description = Touching $out\n"
    edges = "".join(f"build f{i}: touch\n" for i in range(40))
    (tmp_path / "build.ninja").write_text(rules + edges)
    err = io.StringIO()
    run_logged(["ninja", "-j", "1"], tmp_path, tmp_path / "build.log", 60, what="test",
               err=err)
    lines = err.getvalue().splitlines()
    assert lines[-1].startswith("colo-lab:   [40/40] 100 %"), lines
    # One read of the pipe may hold several of ninja's lines (CI once read [20/40] and
    # [21/40] with [22/40]), and only the latest is shown: which steps are shown depends
    # on the scheduler, the rule (every 5 %, so 2 steps, at least apart; the last step
    # always, so it may follow [39/40], as CI once saw) does not.
    done = [int(ln.split()[1][1:].split("/")[0]) for ln in lines]
    assert all(b - a >= 2 for a, b in itertools.pairwise(done[:-1])), lines
    assert done[-1] > done[-2], lines
    log = (tmp_path / "build.log").read_text()
    assert all(f"[{n}/40] Touching f" in log for n in range(1, 41))


def test_a_failed_step_raises_with_the_logs_tail(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"(?s)test failed .*exit 3.*it broke"):
        run_logged(["sh", "-c", "echo it broke; exit 3"], tmp_path, tmp_path / "log", 60,
                   what="test", err=io.StringIO())
