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
