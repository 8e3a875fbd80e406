"""A short seeded fuzz run of the eBPF programs and the comparator (tests/support/
datapath_fuzz.py; `make fuzz` runs 1,000,000 frames): random and mutated frames through
every program of both host roles with BPF_PROG_TEST_RUN, and through a comparator, with
no failed run, no verdict outside the allowed ones, consistent maps and nothing held."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf
ROOT = Path(__file__).resolve().parents[3]
FRAMES, SEED = 20_000, 1


def test_twenty_thousand_seeded_frames_break_nothing() -> None:
    # A child process: the run unshares a network namespace of its own.
    res = subprocess.run([sys.executable, "-m", "tests.support.datapath_fuzz", "--frames",
                          str(FRAMES), "--seed", str(SEED)], cwd=ROOT, capture_output=True,
                         text=True, timeout=50)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"datapath fuzz: {FRAMES} frames in" in res.stdout
    # The run reached the paths it is meant to: learning, rewriting, both verdicts.
    for counter in ("secondary.pvm_isn_learned", "secondary.ack_rewrites",
                    "primary.seq_rewrites", "primary.svm_foreign"):
        assert counter in res.stdout, res.stdout[-2000:]
