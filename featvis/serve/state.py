"""The one set of states a queued picture or a background task goes through."""

from __future__ import annotations

from enum import Enum

#: pictures in a unit page's diversity set, as Microscope shows them (the lowest priority of its pictures)
DIVERSITY = 4
#: seconds a queued picture waits for a page to ask about it again before it is ``dropped`` (torch-free: the CLI's default)
DROP_AFTER = 10.0


class State(str, Enum):
    """``queued`` -> ``running`` -> ``done`` or ``failed`` (a str, so it reads and serialises as its value);
    a queued picture nobody asks about any more is ``dropped`` until someone does again."""

    QUEUED = "queued"
    DROPPED = "dropped"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED)
