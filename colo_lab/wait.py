"""Waiting on a condition with a deadline: the only synchronisation the lab and tests use."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from colo_lab.errors import LabError

T = TypeVar("T")


class WaitTimeout(LabError, AssertionError):
    """A condition not met by its deadline: a LabError for the lab's commands, and an
    AssertionError, so that a test reports it as a failure of what it waited for."""


def wait_until(cond: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.05,
               detail: Callable[[], str] | None = None) -> T:
    """Call `cond` every `every` seconds until it returns something true, and return that.

    After `timeout` seconds raise WaitTimeout naming `what` and, if given, `detail()`
    (what was seen instead). An exception from `cond` ends the wait at once: a condition
    that can no longer come true (a process exited) says so by raising.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            seen = f"; {detail()}" if detail is not None else ""
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(every)
