"""Background work besides rendering: dataset examples, circuits, effective fields, photo analyses.

Each task has a key, runs at most once per key (a failed one may be asked for again) and is
looked up by the pages without waiting. Tasks that use the model run one at a time on their
own copy of it (``aux``): the render queue's model is changed while it optimises (bfloat16,
fused layers), so nothing else may use that one. Dataset examples run as a ``featvis examples``
subprocess per layer, into the cache: that engine is resumable and caches its result, so each
layer's pass happens once, across restarts too.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .._util.errors import FeatvisError
from .._util.fileio import atomic_write_bytes
from ..examples.results import example_png
from ..examples.source import read_prepared
from .layout import CacheLayout
from .state import State

#: seconds a child process gets to end after SIGTERM before it is killed
CHILD_GRACE = 3.0


@dataclass
class Task:
    """One background computation: ``state``, its ``result`` when done, else its ``error``."""

    key: tuple
    state: State = State.QUEUED
    result: Any = None
    error: str | None = None
    log: list[str] = field(default_factory=list)


class _Worker:
    """One daemon thread running submitted calls in order: a server stopping never waits for queued
    or running work (daemon threads end with the process; every cache write is atomic)."""

    def __init__(self, name: str):
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def _loop(self) -> None:
        while True:
            self._calls.get()()


class Tasks:
    """One worker for model work, one for example passes (subprocesses); `stop` drops what is queued
    and ends the running child processes."""

    def __init__(self, log: Callable[[str], None] = lambda message: None):
        self.log = log
        self._tasks: dict[tuple, Task] = {}
        self._lock = threading.Lock()
        self._model_worker = _Worker("featvis-serve-model")
        self._process_worker = _Worker("featvis-serve-examples")
        self._children: set[subprocess.Popen] = set()
        self._stopping = False

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
        (self._process_worker if process else self._model_worker).submit(lambda: self._run(task, work))
        return task

    def _run(self, task: Task, work: Callable[[Task], Any]) -> None:
        if self._stopping:
            return
        task.state = State.RUNNING
        try:
            task.result = work(task)
            task.state = State.DONE
        except Exception as exc:  # the server keeps serving; the page names the problem
            if self._stopping:  # ended by `stop`: not a failure to report
                task.state = State.FAILED
                return
            if not isinstance(exc, FeatvisError):
                traceback.print_exc(file=sys.stderr)
            task.error = str(exc) if isinstance(exc, FeatvisError) else f"{type(exc).__name__}: {exc}"
            task.state = State.FAILED
            self.log(f"featvis serve: {task.key[0]} failed: {task.error}")

    def run_process(self, command: list[str]) -> tuple[int, str, str]:
        """Run ``command`` as a child that dies with this process (even by kill -9, on Linux) and that
        `stop` ends; ``(exit code, stdout, stderr)``."""
        with self._lock:
            if self._stopping:
                raise FeatvisError("the server is stopping")
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent)
            self._children.add(child)
        try:
            out, err = child.communicate()
        finally:
            with self._lock:
                self._children.discard(child)
        return child.returncode, out, err

    def stop(self) -> None:
        """Queued tasks never start; running child processes get SIGTERM, then SIGKILL after `CHILD_GRACE`."""
        with self._lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(CHILD_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the parent dies, however it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere `Tasks.stop` alone ends children)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def examples_command(model_args: Sequence[str], images: str, layer: str, out: Path, k: int, workers: int) -> list[str]:
    """The ``featvis examples`` command line that computes one layer's dataset examples into ``out``: numbers
    only (``--no-crops``), the pages cut the crops they show (`example_crop`)."""
    return [sys.executable, "-m", "featvis", "examples", *model_args, "--images", images, "--layers", layer,
            "--out", str(out), "--k", str(k), "--workers", str(workers), "--no-crops", "--quiet", "--json"]


def run_examples(tasks: Tasks, command: list[str]) -> dict:
    """Run one examples pass (resumable: a stopped server's pass continues) and read its summary."""
    code, out, err = tasks.run_process(command)
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        raise FeatvisError(lines[-1].removeprefix("featvis: error: ") if lines else f"featvis examples exited {code}")
    return json.loads(out)


def example_crop(layout: CacheLayout, layer: str, entry: dict, size: int, full: bool) -> Path:
    """The PNG of one example (its crop, or with ``full`` its whole prepared image with the box drawn), cut
    from its photo as the pass cut it (`example_png`) the first time it is asked for, then kept."""
    key = hashlib.sha256(json.dumps([entry["path"], entry["box"], size, full]).encode()).hexdigest()[:32]
    path = layout.example_crop(layer, key)
    if not path.is_file():
        image, error, _ = read_prepared(entry["path"], size)
        if image is None:
            raise FeatvisError(f"cannot read the example photo again: {error}")
        atomic_write_bytes(path, example_png(image, entry["box"], full=full))
    return path
