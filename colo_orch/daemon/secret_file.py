"""Secrets kept in files: readable by their owner alone, or refused.

A secret that group or others can read is no longer one; refusing it at start, with the
config key and the `chmod`, is kinder than an API anyone on the host can drive.
"""

from __future__ import annotations

import stat
from pathlib import Path


class SecretFileError(ValueError):
    """str() names the field, the file and the fix."""


def read_secret(path: str, field: str, what: str, noun: str) -> bytes:
    """The content of `path` without its line end. `field` is the config key or
    option that names the file, `what` what belongs in it and `noun` what to call it, for
    the errors."""
    f = Path(path)
    try:
        mode = f.stat().st_mode
        data = f.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise SecretFileError(f"{field} {f}: {exc.strerror}; write {what} there "
                              "(mode 0600)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{field} {f}: mode {stat.S_IMODE(mode):04o} lets others "
                              f"read {noun}; chmod 600 {f}")
    if not data:
        raise SecretFileError(f"{field} {f}: empty; write {what} there")
    return data
