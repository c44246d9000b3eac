"""Static HTML built so that escaping cannot be forgotten.

Every page featvis writes is assembled from ``tag(...)`` calls: text children and attribute
values are passed through ``html.escape`` unless they are ``Markup`` produced by this module,
so user data (layer names of user models, photo file names) can never inject markup. URLs are
percent-encoded relative paths. Pages carry their CSS inline and load nothing from the network,
so a gallery opens straight from disk.
"""

from __future__ import annotations

import html
import re
from typing import Iterable, Union
from urllib.parse import quote

VOID = frozenset({"area", "base", "br", "col", "hr", "img", "input", "link", "meta", "source", "wbr"})
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


class Markup(str):
    """A string of HTML that is already safe to insert (built by this module)."""


Content = Union["Markup", str, int, float, None, Iterable["Content"]]


def escape(value: object) -> Markup:
    """``value`` as HTML text: markup stays as is, anything else is escaped (quotes included)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def url(path: str) -> str:
    """Percent-encode a relative path for an ``href``/``src`` (``/`` kept as the separator)."""
    return quote(path, safe="/")


def _children(content: Content) -> Iterable[Markup]:
    if content is None:
        return
    if isinstance(content, (str, int, float)):
        yield escape(content)
        return
    for item in content:
        yield from _children(item)


def tag(element: str, /, *children: Content, **attrs: object) -> Markup:
    """``<element attrs>children</element>``; ``class_`` means ``class``, None drops an attribute, True writes it bare."""
    if not _NAME.match(element):
        raise ValueError(f"bad tag name {element!r}")
    parts = [element]
    for key, value in attrs.items():
        key = key.rstrip("_").replace("_", "-")
        if value is None or value is False:
            continue
        parts.append(key if value is True else f'{key}="{escape(value)}"')
    opening = f"<{' '.join(parts)}>"
    if element in VOID:
        return Markup(opening)
    return Markup(opening + "".join(_children(children)) + f"</{element}>")


def join(*content: Content) -> Markup:
    """Concatenate content (escaping text) into one piece of markup."""
    return Markup("".join(_children(content)))


def document(title: str, *body: Content, css: str = "") -> str:
    """A complete UTF-8 HTML5 page with inline CSS and no external resources."""
    head = join(
        tag("meta", charset="utf-8"),
        tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
        tag("title", title),
        tag("style", Markup(css)) if css else None,
    )
    return "<!DOCTYPE html>\n" + tag("html", tag("head", head), tag("body", *body), lang="en") + "\n"
