"""Another local user, for tests of who may use a socket (root only): a forked child that
drops to a uid and gid before it does anything."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

NOBODY = 65534
DEADLINE = 20.0


def become(uid: int | None, gid: int | None) -> None:
    """Drop to `gid` (no supplementary groups) and `uid`, in that order: after setuid a
    process may no longer change its groups."""
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def _child(pipe: Any, uid: int, gid: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    become(uid, gid)
    try:
        pipe.send(("ok", fn(*args)))
    except Exception as exc:  # handed to the test, which re-raises it
        pipe.send(("error", repr(exc)))


def run_as(uid: int, gid: int, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child running as uid/gid; its return value (picklable)."""
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(theirs, uid, gid, fn, args), daemon=True)
    proc.start()
    theirs.close()
    try:
        assert ours.poll(DEADLINE), "the child did not answer"
        how, value = ours.recv()
    finally:
        proc.join(timeout=DEADLINE)
    if how != "ok":
        raise AssertionError(f"as uid {uid}: {value}")
    return value
