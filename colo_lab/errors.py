"""The one exception type the lab raises: a sentence saying what is wrong and how to fix it."""

from __future__ import annotations


class LabError(Exception):
    """A lab failure an operator can act on; str() is one line: what, then how to fix it."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}; {fix}" if fix else what)
