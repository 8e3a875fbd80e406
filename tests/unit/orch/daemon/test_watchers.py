"""colo_orch.daemon.watchers: how often the observer asks the hypervisor."""

from __future__ import annotations

import pytest

from colo_orch.daemon.watchers import OBSERVE_MAX_WAIT_S, observe_wait


def test_a_quick_observation_comes_every_loop_wait() -> None:
    assert observe_wait(0.05, 0.001) == 0.05  # a QMP query


@pytest.mark.parametrize("took", [0.1, 0.3, 0.45])
def test_a_slow_observation_takes_at_most_a_fifth_of_the_time(took: float) -> None:
    wait = observe_wait(0.05, took)
    assert took / (took + wait) <= 0.2 + 1e-9


def test_a_hung_observation_is_tried_again_within_the_bound() -> None:
    assert observe_wait(0.05, 5.0) == OBSERVE_MAX_WAIT_S  # QMP's timeout
    assert observe_wait(3.0, 5.0) == 3.0  # never more often than loop_wait
