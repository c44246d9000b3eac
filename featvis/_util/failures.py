"""Failures in code featvis does not own, told in one line a user can act on.

A model file that raises on import, a factory that fails or wants arguments, a forward pass
that breaks at the input size: the user needs the exception's type, message and where in
*their* code it happened (file:line), not featvis's or torch's traceback. Shape errors also
suggest another input size. A failure with no frame in the user's code is featvis's own bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import sysconfig
import traceback
import warnings
from pathlib import Path
from types import TracebackType
from typing import Iterator

from .errors import FeatvisError

_LIBRARY_ROOTS = tuple(
    {str(Path(p).resolve()) for p in (sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    | {str(Path(__file__).resolve().parent.parent)}  # featvis itself
)
_USER_FILES: set[str] = set()  # model files featvis imported for the user (they may live anywhere)
_SHAPE_ERROR = re.compile(r"shape|size|mat1 and mat2|dimension|too small|Expected .*input", re.IGNORECASE)
INPUT_SIZE_HINT = "if the model needs another input size, pass --input-size N"


def register_user_file(path: str | os.PathLike) -> None:
    """Mark ``path`` (a model file featvis imports) as the user's code."""
    _USER_FILES.add(str(Path(path).resolve()))


def is_user_file(filename: str) -> bool:
    """True for files of the user's code: registered model files, and any file outside the
    standard library, the installed packages and featvis itself."""
    if not filename or filename.startswith("<"):
        return False
    path = str(Path(filename).resolve())
    return path in _USER_FILES or not path.startswith(_LIBRARY_ROOTS)


def _short(filename: str) -> str:
    path = Path(filename).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def user_location(exc: BaseException) -> str | None:
    """``file:line`` of the deepest frame of ``exc`` in the user's code (a SyntaxError's own place), or None."""
    if isinstance(exc, SyntaxError) and exc.filename and is_user_file(exc.filename):
        return f"{_short(exc.filename)}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__) if isinstance(exc.__traceback__, TracebackType) else []
    for frame in reversed(frames):
        if is_user_file(frame.filename):
            return f"{_short(frame.filename)}:{frame.lineno}"
    return None


def describe(exc: BaseException, location: str | None = None) -> str:
    """``Type: first line of the message (file:line)``, the location being the user's code if found."""
    message = " ".join((str(exc.msg) if isinstance(exc, SyntaxError) else str(exc)).split("\n")[0].split())
    where = user_location(exc) or location
    text = f"{type(exc).__name__}: {message[:300]}" if message else type(exc).__name__
    return f"{text} ({where})" if where else text


def user_code_error(exc: BaseException) -> FeatvisError | None:
    """The one-line error for an exception raised in the user's code; None if it was not (a bug: keep the traceback)."""
    if user_location(exc) is None:
        return None
    hint = f"; {INPUT_SIZE_HINT}" if _SHAPE_ERROR.search(str(exc)) else "; fix your model's code"
    return FeatvisError(f"your model failed: {describe(exc)}{hint}")


def forward_failed(name: str, size: tuple[int, int], exc: BaseException) -> FeatvisError:
    """The one-line error for a model that cannot run at ``size`` (height, width)."""
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return FeatvisError(f"{name} cannot run on a {size[0]}x{size[1]} input ({reason}); try a larger input size")


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one line, with file:line only for the user's code."""
    text = " ".join(str(message).split())
    kind = "" if category is UserWarning else f"{category.__name__}: "
    where = f" ({_short(filename)}:{lineno})" if is_user_file(filename) else ""
    print(f"featvis: warning: {kind}{text[:300]}{where}", file=sys.stderr if file is None else file)


@contextlib.contextmanager
def routed_warnings() -> Iterator[None]:
    """Every Python warning inside prints as `one_line_warning`; the previous handling is restored after."""
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        yield
