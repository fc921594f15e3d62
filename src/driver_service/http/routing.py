"""Routing on the path as sent, so any valid id is one path segment whatever it holds.

ASGI servers give the router the percent-decoded path: an id sent as `a%2Fb` would split
into two segments (and `x%2Ftrail` would reach the trail route of driver `x`), and an id
sent as `a%3AsetStatus` would read as the custom method `setStatus` of driver `a` (Google's
HTTP rules separate a custom method by a literal `:` only). So the router sees the raw path
decoded except `%2F`, `%3A` and `%25`, which stay encoded; the handlers decode each path
parameter once more (`urllib.parse.unquote`), which then undoes exactly those three.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

#: The escapes kept for the router: "/" (a segment break), ":" (a custom method) and "%".
_KEPT = re.compile(r"%(2[fF]|3[aA]|25)")


def routing_path(raw_path: bytes) -> str:
    """The path the router matches: `raw_path` percent-decoded (UTF-8) except `%2F`, `%3A`
    and `%25`, which stay as they are (upper-cased)."""
    text = raw_path.decode("latin-1")
    return unquote(_KEPT.sub(lambda m: "%25" + m.group(1).upper(), text))


class RoutedByRawPath:
    """Sets `scope["path"]` to `routing_path(scope["raw_path"])` for HTTP requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw:
            # In place: the observer outside reads the route the endpoint records in it.
            scope["path"] = routing_path(raw)
        await self.app(scope, receive, send)
