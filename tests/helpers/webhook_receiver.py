"""A real HTTP webhook receiver on 127.0.0.1 (stdlib http.server in a thread) whose behaviour
a test changes while it runs: answer 2xx, answer 500, hang past the sender's timeout, close
the connection without answering, or answer slowly. It also counts requests in flight per
path, so a test can see whether two senders ever delivered to one endpoint at once."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "500", "hang", "close", "slow")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender that closes a kept-alive connection (its pool's idle expiry, a killed
        server) is not an error of the receiver: no traceback on stderr."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: str
    path: str = "/hook"
    #: When the request was read (wall clock, for lag from the event's time).
    at_ns: int = field(default_factory=time.time_ns)

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    mode: str = "ok"
    #: Modes for the next requests, one each in this order, before `mode` applies again:
    #: failures that happen whenever the attempts come, however loaded the machine.
    script: list[str] = field(default_factory=list)
    hang_s: float = 5.0
    slow_s: float = 0.3
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    #: Requests being answered now, and the most there ever were at once, per path.
    in_flight: dict[str, int] = field(default_factory=dict)
    most_in_flight: dict[str, int] = field(default_factory=dict)
    #: Per path, when each webhook-id first arrived (answered or not), kept as requests come:
    #: a bench polls it without copying every request.
    first_arrivals: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.url_for("/hook")

    def url_for(self, path: str) -> str:
        """A URL of this receiver with its own path: one per endpoint of a test."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def delivered_to(self, path: str) -> list[Received]:
        """Requests to `path` answered 2xx, in arrival order."""
        return [r for r in self.delivered() if r.path == path]

    def _enter(self, path: str) -> None:
        with self.lock:
            now = self.in_flight.get(path, 0) + 1
            self.in_flight[path] = now
            self.most_in_flight[path] = max(now, self.most_in_flight.get(path, 0))

    def _leave(self, path: str) -> None:
        with self.lock:
            self.in_flight[path] -= 1

    def next_mode(self) -> str:
        """How to answer the request arriving now: the script's next mode, else `mode`."""
        with self.lock:
            return self.script.pop(0) if self.script else self.mode

    def delivered(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self.lock:
            return [r for r in self.received if r.answered in ("ok", "slow")]

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                mode = receiver.next_mode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._enter(self.path)
                try:
                    status = self._wait(body, mode, headers)
                finally:
                    # Before the answer: the sender may send its next request once it has it.
                    receiver._leave(self.path)
                if status is None:
                    self.close_connection = True  # no response: the socket just closes
                    return
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def _wait(self, body: bytes, mode: str, headers: dict[str, str]) -> int | None:
                """Record the request, wait as the mode says; the status to answer, if any."""
                got = Received(headers, body, mode, self.path)
                with receiver.lock:
                    receiver.received.append(got)
                    first = receiver.first_arrivals.setdefault(self.path, {})
                    first.setdefault(got.headers.get("webhook-id", ""), got.at_ns)
                if mode == "hang":
                    receiver.stopping.wait(receiver.hang_s)
                    return None
                if mode == "close":
                    return None
                if mode == "slow":
                    receiver.stopping.wait(receiver.slow_s)
                return 500 if mode == "500" else 204

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
