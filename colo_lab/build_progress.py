"""Progress of a long build step (the lab's QEMU and Xen builds), from its own output.

Issue 17: the QEMU build printed nothing during its ninja step (about 8 of its 10
minutes). ninja prints one status line per finished edge, `[done/total] description`
(its NINJA_STATUS, which the runner sets to that form explicitly); make and debootstrap
print no totals. `Progress` is the sans-IO part: bytes of the step's output and the clock
in, lines to show out. On a terminal it rewrites one line in place as ninja moves (at most
every `tty_every` seconds); elsewhere (CI, a log file) it prints a line every `every_pct`
percent or `every_s` seconds, whichever comes first. Output without a total shows its
latest line every `quiet_s` seconds, so a long make still shows that it moves.
`run_logged` is the adapter: the process, the build log and stderr.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from colo_lab.errors import LabError

NINJA_STATUS = "[%f/%t] "  # finished/total edges; the form parse_ninja reads
_NINJA = re.compile(r"\[(\d+)/(\d+)\] ?(.*)")


@dataclass(frozen=True, slots=True)
class NinjaStatus:
    done: int
    total: int
    what: str  # ninja's description of the edge, e.g. "Compiling C object foo.c.o"

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Show:
    """A line to show; `in_place`: overwrite the previous in-place line (a terminal)."""

    text: str
    in_place: bool = False


def parse_ninja(line: str) -> NinjaStatus | None:
    """ninja's status line, or None for any other line (compiler warnings, make)."""
    m = _NINJA.match(line.strip())
    if m is None:
        return None
    done, total = int(m.group(1)), int(m.group(2))
    if total == 0 or done > total:
        return None
    return NinjaStatus(done, total, m.group(3))


def short(line: str) -> str:
    """A build output line shortened to what says how far it is: ninja's [n/m] and the
    file, or make's last object, or debootstrap's action."""
    text = line.strip()
    st = parse_ninja(text)
    if st is not None:
        return f"[{st.done}/{st.total}] {text.rsplit(' ', 1)[-1][-60:]}"
    obj = re.findall(r"-o (\S+)", text)
    if obj:
        return f"compiled {obj[-1][-60:]}"
    return text[:90]


class Progress:
    """Lines to show for one build step's output (sans-IO: `feed` bytes with the time)."""

    def __init__(self, t0: float, *, tty: bool, every_pct: float = 5.0,
                 every_s: float = 10.0, quiet_s: float = 20.0,
                 tty_every: float = 0.2) -> None:
        self.t0 = t0
        self.tty = tty
        self.every_pct = every_pct
        self.every_s = every_s
        self.quiet_s = quiet_s
        self.tty_every = tty_every
        self._partial = b""
        self._last: NinjaStatus | None = None  # ninja's latest status
        self._shown: NinjaStatus | None = None  # the last one shown
        self._shown_at = t0
        self._latest = ""  # the latest non-empty line without a total

    def feed(self, data: bytes, now: float) -> list[Show]:
        """The step printed `data` (any piece of its output, lines may be split)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            st = parse_ninja(line)
            if st is not None:
                self._last = st
            elif line.strip():
                self._latest = line
        return self.tick(now)

    def tick(self, now: float) -> list[Show]:
        """What to show at `now` (also with no new output: the clock alone may call for a
        periodic line)."""
        st = self._last
        since = now - self._shown_at
        if st is None:
            if self._latest and since >= self.quiet_s:
                self._shown_at = now
                return [Show(f"{now - self.t0:4.0f} s  {short(self._latest)}")]
            return []
        if st == self._shown:
            return []
        if self.tty:
            due = since >= self.tty_every or st.done == st.total
        else:
            last_pct = self._shown.percent if self._shown is not None else 0.0
            due = (st.percent - last_pct >= self.every_pct or since >= self.every_s
                   or st.done == st.total)
        if not due:
            return []
        self._shown, self._shown_at = st, now
        return [Show(self._line(st, now), in_place=self.tty)]

    def _line(self, st: NinjaStatus, now: float) -> str:
        return (f"[{st.done}/{st.total}] {st.percent:3.0f} %  {now - self.t0:4.0f} s  "
                f"{st.what.rsplit(' ', 1)[-1][-50:]}")


def run_logged(argv: list[str], cwd: Path, log: Path, timeout: float, *, what: str,
               prefix: str = "colo-lab:   ", err: TextIO | None = None) -> None:
    """Run one build step with its output appended to `log`, showing its progress on
    stderr; raise LabError (with the log's tail) if it fails or outlives `timeout`."""
    out = err if err is not None else sys.stderr
    tty = out.isatty()
    t0 = time.monotonic()
    progress = Progress(t0, tty=tty)
    in_place = False
    env = {**os.environ, "NINJA_STATUS": NINJA_STATUS}
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}  (in {cwd})\n".encode())
        fh.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        try:
            while True:
                now = time.monotonic()
                if now - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise LabError(f"{what} timed out after {timeout:.0f} s: "
                                   f"{' '.join(argv)}", f"see {log}")
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
                eof = bool(ready) and not chunk
                fh.write(chunk)
                # At the end, a last line without its newline still counts.
                for show in progress.feed(b"\n" if eof else chunk, time.monotonic()):
                    if show.in_place:
                        out.write(f"\r{prefix}{show.text}\x1b[K")
                    else:
                        out.write(("\n" if in_place else "") + f"{prefix}{show.text}\n")
                    in_place = show.in_place
                    out.flush()
                if eof:
                    break
        finally:
            if in_place:
                out.write("\n")
                out.flush()
            proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise LabError(f"{what} failed ({' '.join(argv)}, exit {rc}):\n" + "\n".join(tail),
                       f"see {log}")
