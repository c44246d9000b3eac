"""stdout is featvis's: while a command runs, text printed by anything else goes to stderr.

User models (and packages they build on, e.g. EfficientNet implementations) may print when
built or on forward; on stdout that text would corrupt ``featvis ... --json | jq`` and tables
piped into other tools. ``commands_own_stdout`` replaces ``sys.stdout`` with a router that
passes writes made by code of the ``featvis.cli`` package (the commands' own output) to the
real stdout and sends every other write to stderr.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, TextIO

OWNER = __name__.rpartition(".")[0]  # featvis.cli


class StdoutRouter:
    """A text stream: writes from ``featvis.cli`` code reach ``stdout``, all others ``stderr``."""

    def __init__(self, stdout: TextIO, stderr: TextIO):
        self._stdout, self._stderr = stdout, stderr

    def write(self, text: str) -> int:
        caller = sys._getframe(1).f_globals.get("__name__", "")  # print() is C: frame 1 is print's caller
        owned = caller == OWNER or caller.startswith(OWNER + ".")
        return (self._stdout if owned else self._stderr).write(text)

    def flush(self) -> None:
        self._stdout.flush()
        self._stderr.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ... of the real stdout
        return getattr(self._stdout, name)


@contextlib.contextmanager
def commands_own_stdout() -> Iterator[None]:
    """Route stdout as the module docstring says, for the duration."""
    saved = sys.stdout
    sys.stdout = StdoutRouter(saved, sys.stderr)
    try:
        yield
    finally:
        sys.stdout = saved
