"""The campaign runner's pure helpers: which host plays a role now, and PROTECTED."""

from __future__ import annotations

import pytest

from colo_lab.chaos import runner
from colo_lab.errors import LabError

SWAPPED = {"primary": {"state": "PROTECTED", "role": "secondary"},
           "secondary": {"state": "PROTECTED", "role": "primary"}}


def test_a_role_target_is_the_host_that_plays_it_now() -> None:
    assert runner._host_of(SWAPPED, "pvm") == "secondary"
    assert runner._host_of(SWAPPED, "svm") == "primary"
    assert runner._host_of(SWAPPED, "etcd2") == ""  # an etcd member is no host's
    with pytest.raises(LabError, match="no host plays the pvm"):
        runner._host_of({"primary": None, "secondary": SWAPPED["primary"]}, "pvm")


def test_protected_needs_both_hosts_answering_protected() -> None:
    assert runner._protected(SWAPPED)
    assert not runner._protected({**SWAPPED, "secondary": None})
    # A checkpoint under way is a protected pair's state; two primaries are not a pair.
    assert runner._protected({**SWAPPED, "secondary": {"state": "CHECKPOINTING",
                                                       "role": "primary"}})
    assert not runner._protected({**SWAPPED, "primary": {"state": "PROTECTED",
                                                         "role": "primary"}})
    assert not runner._protected({**SWAPPED, "primary": {"state": "ALONE",
                                                         "role": "secondary"}})


def test_verify_disks_compares_the_serving_primarys_image_with_the_other(tmp_path) -> None:
    from colo_lab.lab import Lab

    lab = Lab("unit")
    lab.run_dir, lab.disk = tmp_path, True
    pri, sec = lab.disks("primary")[0].image, lab.disks("secondary")[0].image
    data = bytes(range(256)) * 4096  # 1 MiB
    for path in (pri, sec):
        with open(path, "wb") as f:
            f.write(data)
    got = runner.verify_disks(lab, SWAPPED)
    assert got["equal"] is True and got["primary"] == "secondary", got
    with open(pri, "r+b") as f:  # one byte changed on one image
        f.seek(12345)
        f.write(b"\xff")
    # --settle is 2 s by default: a real difference is reported after it.
    got = runner.verify_disks(lab, SWAPPED)
    assert got["equal"] is False, got
    (tmp_path / "sec-disk.raw").unlink()
    assert runner.verify_disks(lab, SWAPPED)["equal"] is None


def _pair(primary_state: str) -> dict[str, dict[str, str] | None]:
    return {"primary": {"state": primary_state, "role": "primary"},
            "secondary": {"state": "PROTECTED", "role": "secondary"}}


def _feed(r: runner.Recovery, samples: list[tuple[float, str]]) -> float | None:
    """The time of the first sample at which the pair counts as back, else None."""
    for at, st in samples:
        if r.see(at, _pair(st)):
            return at
    return None


def test_a_pair_is_back_after_stable_s_of_protected_samples_after_the_fault() -> None:
    r = runner.Recovery(t_end=10.0)
    # Samples before the fault's end never count; brief checkpoints are a protected pair's.
    samples = [(9.5, "PROTECTED")] + [
        (10.0 + 0.3 * i, "CHECKPOINTING" if i % 3 == 0 else "PROTECTED") for i in range(1, 20)]
    back = _feed(r, samples)
    assert back is not None and r.since == pytest.approx(10.3)
    assert back - r.since >= runner.STABLE_S


def test_a_hung_checkpoint_is_no_recovery_and_the_pair_is_back_after_it() -> None:
    # A cut of the migration link: the primary says CHECKPOINTING from before the heal
    # until 5 s after it, while its stream waits on the dead link.
    r = runner.Recovery(t_end=10.0)
    hung = [(10.0 + 0.3 * i, "CHECKPOINTING") for i in range(1, 18)]  # to 15.1
    assert _feed(r, hung) is None
    back = _feed(r, [(15.4 + 0.3 * i, "PROTECTED") for i in range(20)])
    assert r.since == pytest.approx(15.4) and back is not None
