"""Background work besides rendering: dataset examples, circuits, effective fields, photo analyses.

Each task has a key, runs at most once per key (a failed one may be asked for again) and is
looked up by the pages without waiting. Tasks that use the model run one at a time on their
own copy of it (``aux``): the render queue's model is changed while it optimises (bfloat16,
fused layers), so nothing else may use that one. Dataset examples run as a ``featvis examples``
subprocess per layer, into the cache: that engine is resumable and caches its result, so each
layer's pass happens once, across restarts too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .._util.errors import FeatvisError
from .state import State



@dataclass
class Task:
    """One background computation: ``state``, its ``result`` when done, else its ``error``."""

    key: tuple
    state: State = State.QUEUED
    result: Any = None
    error: str | None = None
    log: list[str] = field(default_factory=list)


class Tasks:
    """A one-thread executor for model work, plus one for example passes (subprocesses)."""

    def __init__(self, log: Callable[[str], None] = lambda message: None):
        self.log = log
        self._tasks: dict[tuple, Task] = {}
        self._lock = threading.Lock()
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="featvis-serve-model")
        self._process_pool = ThreadPoolExecutor(1, thread_name_prefix="featvis-serve-examples")

    def get(self, key: tuple) -> Task | None:
        with self._lock:
            return self._tasks.get(key)

    def start(self, key: tuple, work: Callable[[Task], Any], *, process: bool = False, retry: bool = False) -> Task:
        """The task for ``key``, started now unless it already runs or ran (a failed one runs again with ``retry``:
        a page load retries, the page's polling does not)."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None and (task.state != State.FAILED or not retry):
                return task
            task = self._tasks[key] = Task(key)
        (self._process_pool if process else self._model_pool).submit(self._run, task, work)
        return task

    def _run(self, task: Task, work: Callable[[Task], Any]) -> None:
        task.state = State.RUNNING
        try:
            task.result = work(task)
            task.state = State.DONE
        except Exception as exc:  # the server keeps serving; the page names the problem
            if not isinstance(exc, FeatvisError):
                traceback.print_exc(file=sys.stderr)
            task.error = str(exc) if isinstance(exc, FeatvisError) else f"{type(exc).__name__}: {exc}"
            task.state = State.FAILED
            self.log(f"featvis serve: {task.key[0]} failed: {task.error}")


def examples_command(model_args: Sequence[str], images: str, layer: str, out: Path, k: int, workers: int) -> list[str]:
    """The ``featvis examples`` command line that computes one layer's dataset examples into ``out``."""
    return [sys.executable, "-m", "featvis", "examples", *model_args, "--images", images, "--layers", layer,
            "--out", str(out), "--k", str(k), "--workers", str(workers), "--full", "--quiet", "--json"]


def run_examples(command: list[str], out: Path) -> dict:
    """Run one examples pass (resumable: a killed server's pass continues) and read its summary."""
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise FeatvisError(lines[-1].removeprefix("featvis: error: ") if lines else f"featvis examples exited {done.returncode}")
    return json.loads(done.stdout)


def example_file(out: Path, rel: str | None) -> Path | None:
    """A file an examples result names, only if it lies inside ``out`` (never elsewhere)."""
    if not rel:
        return None
    path = (out / rel).resolve()
    root = out.resolve()
    return path if path.is_relative_to(root) and path.suffix == ".png" and path.is_file() else None
