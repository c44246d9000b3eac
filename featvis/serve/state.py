"""The one set of states a queued picture or a background task goes through."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """``queued`` -> ``running`` -> ``done`` or ``failed`` (a str, so it reads and serialises as its value)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED)
