"""Progress of the long steps of a protection, without I/O: the disks' resync (QEMU's
drive-mirror jobs) and the first copy of the VM's memory (the COLO migration), as
(bytes done, bytes total) with the time they started, and how to say it.

The backend updates one `Progress` as it polls QEMU (query-block-jobs `offset`/`len`,
query-migrate `ram.transferred`/`ram.total`); `GET /state`, `coloctl status`, the
metrics and a log line every LOG_EVERY_S show it.
"""

from __future__ import annotations

from dataclasses import dataclass

LOG_EVERY_S = 5.0
PHASES = ("disks", "memory")


@dataclass(frozen=True)
class Progress:
    phase: str  # one of PHASES
    done: int  # bytes
    total: int  # bytes; 0 while QEMU does not know yet
    started: float  # the caller's clock
    now: float

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total > 0 else None

    @property
    def rate(self) -> float | None:
        """Bytes a second since the start, or None too early to say."""
        elapsed = self.now - self.started
        return self.done / elapsed if elapsed >= 0.5 and self.done > 0 else None

    def view(self) -> dict[str, object]:
        frac, rate = self.fraction, self.rate
        return {"phase": self.phase, "done_bytes": self.done, "total_bytes": self.total,
                "percent": None if frac is None else round(100 * frac, 1),
                "elapsed_s": round(self.now - self.started, 1),
                "bytes_per_s": None if rate is None else round(rate)}

    def describe(self) -> str:
        """`memory 45% (1.2 of 2.7 GB, 120 MB/s, about 12 s left)`."""
        frac, rate = self.fraction, self.rate
        if frac is None:
            return f"{self.phase}: starting ({_size(self.done)} so far)"
        parts = [f"{_size(self.done)} of {_size(self.total)}"]
        if rate is not None:
            parts.append(f"{_size(int(rate))}/s")
            if self.total > self.done:
                parts.append(f"about {(self.total - self.done) / rate:.0f} s left")
        return f"{self.phase} {100 * frac:.0f}% ({', '.join(parts)})"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class Ticker:
    """Whether a periodic progress line is due (at the first call, then every `every` s)."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self._last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True
