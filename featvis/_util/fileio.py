"""Atomic file output: a file is either absent, the old version, or the complete new one.

Everything featvis writes (images, JSON, weights, HTML) goes through here, so an interrupted
run or a full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FeatvisError

_UMASK = os.umask(0)
os.umask(_UMASK)
# errors that mean "no room for this file": the fix is the user's (free space, raise a limit, another folder)
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file exceeds the size this file system or process may write"}


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be created in it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FeatvisError(f"cannot create folder {folder}: a file of that name exists; choose a writable output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatvisError(f"cannot create folder {folder}: {exc.strerror}; choose a writable output folder") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".featvis-probe-"):
            pass
    except OSError as exc:
        raise FeatvisError(f"cannot write to folder {folder}: {exc.strerror}; choose a writable output folder") from None
    return folder


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a folder, in a writable folder."""
    target = Path(path)
    if target.is_dir():
        raise FeatvisError(f"{target} is a folder; give a file name for the output, e.g. {target / ('out' + (target.suffix or '.png'))}")
    ensure_writable_dir(target.parent if str(target.parent) else ".")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched; running out of
    room (disk full, quota, file size limit) is a one-line FeatvisError saying so.
    """
    target = Path(path)
    folder = ensure_writable_dir(target.parent if str(target.parent) else ".")
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        kept = "the previous file is unchanged" if target.exists() else "nothing was written"
        raise FeatvisError(f"cannot write {target}: {_NO_ROOM[exc.errno]} ({kept}); free some space or "
                           "choose another output folder") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))
