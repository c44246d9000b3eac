"""Only this machine's own pages may drive the server.

A page on any other site can make the browser send requests to ``http://127.0.0.1:8000`` (a
cross-site form POST), or rebind its own domain's DNS to 127.0.0.1 and then read the answers
(DNS rebinding). So every request must name an allowed ``Host`` (the address the server is bound
to, ``localhost``, loopback addresses, and ``--allow-host`` names), and a state-changing request
(anything but GET/HEAD) must come from the server's own pages: its ``Origin``, when sent, names the
same host, and ``Sec-Fetch-Site``, when sent, says same-origin. Even a GET from another site's page
(an ``<img>`` of a unit page queues its renders; a poll keeps queued work alive) is refused unless it is
the user following a link (``Sec-Fetch-Mode: navigate``). Every answer carries the usual
security headers (no sniffing, no framing by other sites, referrers only to itself, a same-origin CSP).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"SAMEORIGIN",
    b"referrer-policy": b"same-origin",  # not no-referrer: Chrome then sends "Origin: null" even for a same-origin form
    b"cross-origin-resource-policy": b"same-origin",
    b"content-security-policy": b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                                b"img-src 'self' data:; frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
}
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (without port) the server answers to: its bound address, the loopback names, ``extra``."""
    return frozenset(name.strip("[]").lower() for name in (bound, *LOCAL_NAMES, *extra) if name)


def _host_name(value: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``; ``[::1]:8000`` -> ``::1``."""
    return (urlsplit(f"//{value}").hostname or "").lower()


def _wildcard(bound: str) -> bool:
    try:
        return ipaddress.ip_address(bound.strip("[]")).is_unspecified
    except ValueError:
        return False


class HostGuard:
    """ASGI middleware enforcing the rules of the module docstring around ``app``."""

    def __init__(self, app: Callable[..., Awaitable[None]], hosts: frozenset[str], bound: str):
        self.app, self.hosts, self.any_ip = app, hosts, _wildcard(bound)

    def _host_ok(self, name: str) -> bool:
        if name in self.hosts:
            return True
        if self.any_ip:  # bound to every interface: any of this machine's addresses, typed as an IP
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = _host_name(headers.get("host", ""))
        problem = None
        if not self._host_ok(host):
            problem = (421, f"this server does not answer to host '{host[:80]}'; open it at its own address "
                            "(or start it with --allow-host NAME)")
        elif scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            if (origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower()) \
                    or (site is not None and site not in ("same-origin", "none")):
                problem = (403, "cross-origin requests that change the server's state are refused; use the server's own pages")
        elif headers.get("sec-fetch-site") not in (None, "same-origin", "none") and headers.get("sec-fetch-mode") != "navigate":
            # another site's page fetching or embedding ours (an <img> of a unit page queues renders, polling keeps
            # queued work alive): only a link followed by the user opens a page here
            problem = (403, "requests from other sites' pages are refused (a link to a page works); use the server's own pages")
        if problem is not None:
            body = problem[1].encode()
            await send({"type": "http.response.start", "status": problem[0],
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                                    *SECURITY_HEADERS.items()]})
            return await send({"type": "http.response.body", "body": body})

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((k, v) for k, v in SECURITY_HEADERS.items() if k not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
