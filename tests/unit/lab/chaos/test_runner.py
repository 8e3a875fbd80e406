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
