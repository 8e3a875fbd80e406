"""Sans-IO comparison of PVM and SVM output (see docs/COMPARE.md).

Pure: no sockets, no clock, no bcc, no NFQUEUE, no metrics; the caller passes ``now``.
The modules run compiled by mypyc when a build matching these sources exists
(``_compiled``); ``COMPILED`` says which.
"""

from colo_proxy.compare import _compiled

_native = _compiled.find()
if _native is not None:
    __path__.insert(0, str(_native))
COMPILED = _native is not None

# These imports must come after __path__ is set: they load the compiled modules if any.

from colo_proxy.compare.comparator import Comparator, CompareStats  # noqa: E402
from colo_proxy.compare.config import CompareConfig, FlowMatch, Policy  # noqa: E402
from colo_proxy.compare.events import (  # noqa: E402
    REASONS,
    SEGMENT,
    SUPER,
    WHOLE,
    Command,
    Drop,
    Flow,
    LentFlow,
    PacketId,
    Reason,
    Release,
    RequestCheckpoint,
    Resegment,
    Side,
    Wakeup,
)
from colo_proxy.compare.parse import flow_of  # noqa: E402

__all__ = [
    "COMPILED",
    "REASONS",
    "SEGMENT",
    "SUPER",
    "WHOLE",
    "Command",
    "Comparator",
    "CompareConfig",
    "CompareStats",
    "Drop",
    "Flow",
    "FlowMatch",
    "LentFlow",
    "PacketId",
    "Policy",
    "Reason",
    "Release",
    "RequestCheckpoint",
    "Resegment",
    "Side",
    "Wakeup",
    "flow_of",
]
