"""The seeded fault schedule of a campaign (pure: a seed in, the same faults out).

The menu (docs/RELIABILITY.md explains each). Targets are roles, not hosts: `pvm` is
whichever host serves as primary when the fault comes, `svm` the other, so a schedule
means the same thing after roles have swapped.

A fault may be timed to hit a checkpoint or a re-protection (`params["when"]`, WHEN).

Every kind comes once in each round, in an order shuffled per round, so N faults hold
every kind at least N // len(KINDS) times (all of them once N >= len(KINDS)).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

ROLES = ("pvm", "svm")
# kind: the targets it may hit.
KINDS: dict[str, tuple[str, ...]] = {
    "kill-qemu": ROLES,
    "stop-qemu": ROLES,
    "kill-proxy": ROLES,
    "stop-proxy": ROLES,
    "kill-orch": ROLES,
    "stop-orch": ROLES,
    "host-death": ROLES,
    "cut-control": ROLES,
    "cut-forward": ROLES,
    # The migration link carries the COLO stream (every checkpoint) and NBD, nothing else.
    "cut-migration": ROLES,
    # The secondary's uplink is down while protected: cutting it would change nothing.
    "cut-uplink": ("pvm",),
    "cut-etcd": ROLES,
    "loss-control": ROLES,
    "loss-forward": ROLES,
    "etcd-kill": ("etcd1", "etcd2", "etcd3"),
}
STOP_S = (2.0, 10.0)  # SIGSTOP to SIGCONT (the 2-10 s)
CUT_S = (2.0, 10.0)  # a link down, a host dead, an etcd member down, a loss period
LOSS_PCT = (1, 20)  # iptables statistic drop probability, per cent
GAP_S = (1.0, 5.0)  # quiet time after re-protection before the next fault
# When a fault comes: on a settled pair, just after a checkpoint was asked for (so that it
# hits one under way), or while the pair re-protects after its SVM's QEMU was killed
# (the COLO migration and disk resync under way). An etcd member's death is always steady.
WHEN = ("steady", "steady", "steady", "checkpoint", "reprotect")


@dataclass(frozen=True, slots=True)
class Planned:
    index: int
    kind: str
    target: str
    gap_s: float  # settled time before it
    duration_s: float  # how long the fault lasts (0: instantaneous, as a SIGKILL)
    params: dict[str, Any] = field(default_factory=dict)


def plan(seed: int, n: int, kinds: tuple[str, ...] | None = None) -> list[Planned]:
    """N faults from `kinds` (default every kind) for `seed`."""
    menu = tuple(kinds) if kinds is not None else tuple(KINDS)
    unknown = [k for k in menu if k not in KINDS]
    if unknown:
        raise ValueError(f"no fault kind {unknown}; the kinds are {', '.join(KINDS)}")
    if not menu:
        raise ValueError("no fault kinds to draw from")
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        rnd = list(menu)
        rng.shuffle(rnd)
        order += rnd
    # Each fault's parameters from a generator of its own: a shorter campaign is a
    # prefix of a longer one with the same seed (a failing fault is replayed with -n).
    return [_one(random.Random(f"{seed}:{i}"), i, kind) for i, kind in enumerate(order[:n])]


def _one(rng: random.Random, i: int, kind: str) -> Planned:
    target = rng.choice(KINDS[kind])
    gap = round(rng.uniform(*GAP_S), 2)
    params: dict[str, Any] = {}
    if kind.startswith("stop-"):
        duration = round(rng.uniform(*STOP_S), 2)
    elif kind.startswith("kill-"):
        duration = 0.0
    else:
        duration = round(rng.uniform(*CUT_S), 2)
    if kind.startswith("loss-"):
        params["loss_pct"] = rng.randint(*LOSS_PCT)
    when = rng.choice(WHEN)
    if when == "reprotect" and target == "pvm" and kind in ("kill-qemu", "host-death"):
        # During a re-protection the PVM holds the only whole copy of the VM: the new SVM
        # has none until the migration ends. Losing it then is a double fault (the SVM's
        # QEMU was killed to start the re-protection) that no COLO pair survives; seed 1's
        # 57th fault showed the pair, rightly, serving nothing. Such a fault comes steady.
        when = "steady"
    if when != "steady" and kind != "etcd-kill":
        params["when"] = when
    return Planned(i, kind, target, gap, duration, params)
