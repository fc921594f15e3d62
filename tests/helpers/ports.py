"""A free TCP port on the loopback interface, for the servers tests start."""

from __future__ import annotations

import socket

#: Every port handed out in this process: the OS may offer a port again as soon as its probe
#: socket is closed, and a test that asks for two ports before starting anything (a server's
#: gRPC and admin ports) got the same one twice ("address already in use", exit 2).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and not handed out before in this process (the OS picks
    it; a race with another process binding it before the caller does is possible, so
    starters retry on another port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
