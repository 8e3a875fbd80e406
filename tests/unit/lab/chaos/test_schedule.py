"""The seeded fault schedule: same seed, same schedule; every kind drawn; parameters in
their ranges."""

from __future__ import annotations

from collections import Counter

import pytest

from colo_lab.chaos import schedule


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert schedule.plan(7, 40) == schedule.plan(7, 40)
    assert schedule.plan(7, 40) != schedule.plan(8, 40)


def test_a_shorter_campaign_is_a_prefix_of_a_longer_one() -> None:
    assert schedule.plan(3, 100)[:8] == schedule.plan(3, 8)


def test_every_kind_appears_evenly() -> None:
    n = 100
    counts = Counter(p.kind for p in schedule.plan(11, n))
    assert set(counts) == set(schedule.KINDS)
    assert min(counts.values()) >= n // len(schedule.KINDS)
    # The acceptance: every kind at least 5 times in 100 faults.
    assert min(counts.values()) >= 5
    first = {p.kind for p in schedule.plan(11, len(schedule.KINDS))}
    assert first == set(schedule.KINDS)


def test_parameters_lie_in_their_ranges() -> None:
    for p in schedule.plan(5, 300):
        assert p.target in schedule.KINDS[p.kind]
        assert schedule.GAP_S[0] <= p.gap_s <= schedule.GAP_S[1]
        if p.kind.startswith("stop-"):
            assert schedule.STOP_S[0] <= p.duration_s <= schedule.STOP_S[1]
        elif p.kind.startswith("kill-"):
            assert p.duration_s == 0
        else:
            assert schedule.CUT_S[0] <= p.duration_s <= schedule.CUT_S[1]
        if p.kind.startswith("loss-"):
            assert schedule.LOSS_PCT[0] <= p.params["loss_pct"] <= schedule.LOSS_PCT[1]


def test_a_subset_of_kinds_and_an_unknown_kind() -> None:
    got = {p.kind for p in schedule.plan(1, 20, ("kill-qemu", "cut-etcd"))}
    assert got == {"kill-qemu", "cut-etcd"}
    with pytest.raises(ValueError, match="no fault kind"):
        schedule.plan(1, 3, ("kill-everything",))


def test_some_faults_are_timed_into_a_checkpoint_or_a_reprotection() -> None:
    whens = Counter(p.params.get("when", "steady") for p in schedule.plan(2, 100))
    assert set(whens) == {"steady", "checkpoint", "reprotect"}
    assert all("when" not in p.params for p in schedule.plan(2, 300) if p.kind == "etcd-kill")


def test_the_pvm_is_never_destroyed_during_a_reprotection() -> None:
    # The PVM then holds the only whole copy: its loss would be a double fault.
    plans = [p for seed in range(20) for p in schedule.plan(seed, 100)]
    assert not [p for p in plans if p.params.get("when") == "reprotect" and p.target == "pvm"
                and p.kind in ("kill-qemu", "host-death")]
    assert [p for p in plans if p.params.get("when") == "reprotect" and p.target == "svm"
            and p.kind in ("kill-qemu", "host-death")]
