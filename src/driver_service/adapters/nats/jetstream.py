"""EventSink on NATS JetStream (nats-py, the NATS project's own client).

Each event is one message on `PREFIX.<event type>` (e.g. `driver_service.events.zone.enter`)
whose body is the webhook body (docs/events.md) and whose `Nats-Msg-Id` header is the event
id: JetStream drops a message whose id it stored within the stream's duplicate window, so a
republished event (after a lost ack, a restart, or by another replica) is stored once.

Publishing is one message at a time, each ack awaited before the next is sent: the stream
then holds a prefix of the log in order, so its newest message says how far publishing got
(`last_published_id`), with no cursor to keep anywhere else. Pipelined publishes could store
a later event while an earlier one failed, and resuming after the later one would skip it.

The stream is made when missing (subjects `PREFIX.>`, a 2-minute duplicate window, file
storage); an existing one is used as it is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from driver_service.domain.events import LoggedEvent
from driver_service.domain.webhooks import event_payload

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
#: How long JetStream remembers a message id: copies published within it are dropped.
DUPLICATE_WINDOW_S = 120.0


class JetStreamSink:
    name = "nats"

    def __init__(
        self,
        servers: Sequence[str],
        stream: str,
        subject_prefix: str,
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self._servers = list(servers)
        self.stream = stream
        self.prefix = subject_prefix
        self._timeout_s = timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def subject(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"

    async def _context(self) -> JetStreamContext:
        """The connection, made at first use and again after it closed; once made, the client
        reconnects by itself (publishes fail meanwhile and are retried by the caller)."""
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        nc = await nats.connect(
            servers=self._servers,
            connect_timeout=self._timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._on_error,
            name="driver-service",
        )
        js = nc.jetstream(timeout=self._timeout_s)
        try:
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.prefix}.>"],
                    duplicate_window=DUPLICATE_WINDOW_S,
                    storage=StorageType.FILE,
                )
            )
            log.warning("NATS: made JetStream stream %s for %s.>", self.stream, self.prefix)

    @staticmethod
    async def _on_error(exc: Exception) -> None:
        log.warning("NATS: %r", exc)

    async def last_published_id(self) -> int:
        js = await self._context()
        try:
            msg = await js.get_last_msg(self.stream, f"{self.prefix}.>")
        except nats.js.errors.NotFoundError:
            return 0
        msg_id = (msg.headers or {}).get(MSG_ID, "")
        if not msg_id.isdigit():
            # Not one of ours (something else publishes to the prefix): start over; the
            # duplicate window and consumers' own deduplication absorb the repeats.
            log.warning("NATS: the newest message on %s.> has no event id", self.prefix)
            return 0
        return int(msg_id)

    async def publish(self, events: Sequence[LoggedEvent]) -> None:
        js = await self._context()
        for logged in events:
            await js.publish(
                self.subject(logged.event.type.value),
                event_payload(logged),
                timeout=self._timeout_s,
                stream=self.stream,
                headers={MSG_ID: str(logged.event_id)},
            )

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort at shutdown
                log.warning("NATS: closing failed: %r", exc)
