"""Sans-IO comparison of PVM and SVM output (see docs/COMPARE.md).

Pure: no sockets, no clock, no bcc, no NFQUEUE, no metrics; the caller passes ``now``.
"""

from colo_proxy.compare.comparator import Comparator, CompareStats
from colo_proxy.compare.config import CompareConfig, FlowMatch, Policy
from colo_proxy.compare.events import (
    REASONS,
    Command,
    Drop,
    Flow,
    PacketId,
    Reason,
    Release,
    RequestCheckpoint,
    Side,
    Wakeup,
)
from colo_proxy.compare.parse import flow_of

__all__ = [
    "REASONS",
    "Command",
    "Comparator",
    "CompareConfig",
    "CompareStats",
    "Drop",
    "Flow",
    "FlowMatch",
    "PacketId",
    "Policy",
    "Reason",
    "Release",
    "RequestCheckpoint",
    "Side",
    "Wakeup",
    "flow_of",
]
