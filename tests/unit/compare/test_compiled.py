"""The compiled (mypyc) build of the comparator: used only when it matches the sources.

The rest of tests/unit/compare runs on whichever build this interpreter loaded; the last
test here runs them again on the other one (interpreted), so both are checked in one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import colo_proxy.compare as compare
from colo_proxy.compare import _compiled, comparator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _probe(env: dict[str, str]) -> str:
    """Which build a fresh interpreter loads under ``env``: 'compiled' or 'pure'."""
    code = (
        "import colo_proxy.compare as c, colo_proxy.compare.comparator as m;"
        "assert c.COMPILED == (not m.__file__.endswith('.py')), m.__file__;"
        "print('compiled' if c.COMPILED else 'pure')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_build_is_used_when_required() -> None:
    # make test sets COLO_REQUIRE_COMPILED: the bootstrap must have built the core.
    if os.environ.get("COLO_COMPARE_PURE", "") not in ("", "0"):
        pytest.skip("COLO_COMPARE_PURE is set")
    if os.environ.get("COLO_REQUIRE_COMPILED") != "1" and _compiled.find() is None:
        pytest.skip("no compiled build for these sources (scripts/build-compare)")
    assert compare.COMPILED
    assert comparator.__file__ is not None and comparator.__file__.endswith(".so")


def test_pure_switch_and_stale_builds_fall_back_to_the_sources(tmp_path: Path) -> None:
    assert _probe({"COLO_COMPARE_PURE": "1"}) == "pure"
    # A build for other sources (another key) is never loaded.
    stale = tmp_path / "0123456789abcdef" / "colo_proxy" / "compare"
    stale.mkdir(parents=True)
    for name in (*_compiled.MODULES, "_native__mypyc"):
        (stale / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a library")
    assert _probe({"COLO_COMPARE_BUILD": str(tmp_path)}) == "pure"
    # The key changes with any byte of any compiled module.
    key = _compiled.source_key()
    assert len(key) == 16 and key != "0123456789abcdef"


@pytest.mark.skipif(not compare.COMPILED, reason="already running interpreted")
def test_comparator_tests_pass_interpreted_too() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE)],
        env={**os.environ, "COLO_COMPARE_PURE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
