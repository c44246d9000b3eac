"""Progress where the user can see it: a terminal, a notebook, or a log file.

``progress_bar`` gives tqdm's widget inside Jupyter when ipywidgets is installed, tqdm's bar on
a terminal, and otherwise (a notebook without ipywidgets, a pipe, a CI log) plain lines on
stderr, one every ``interval`` seconds and one at the end, since a carriage-return bar shows
nothing useful there.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

LINE_INTERVAL = 10.0  # seconds between plain progress lines


class Counter(Protocol):
    """What featvis's loops need of a progress bar (tqdm and `LineProgress` both are)."""

    def update(self, n: int = 1) -> Any: ...


class LineProgress:
    """A tqdm-like counter that prints ``desc: n/total unit (pct), elapsed, ~left`` lines."""

    def __init__(self, total: int, desc: str, unit: str, interval: float = LINE_INTERVAL, file: TextIO | None = None,
                 initial: int = 0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.file = file or sys.stderr
        self.n = self.first = initial
        self.start = time.monotonic()
        self.last = self.start  # no line at the start: a job that fails at once prints only its error

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval or self.n >= self.total:
            self.last = now
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        left = f", ~{(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.n < self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {elapsed:.0f} s{left}", file=self.file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NoProgress(LineProgress):
    """Counts silently (progress turned off)."""

    def _line(self) -> None:
        pass


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = False, initial: int = 0) -> Any:
    """A progress counter with ``update(n)``, usable as a context manager (see the module docstring);
    ``initial``: already done (a resumed pass)."""
    if not enabled:
        return NoProgress(total, desc, unit, initial=initial)
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm's widget needs it)
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(total=total, desc=desc, unit=unit, leave=leave, initial=initial)
        except ImportError:
            return LineProgress(total, desc, unit, initial=initial)
    stream = sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=stream, initial=initial, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial=initial)
