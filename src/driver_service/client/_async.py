"""The async client: a deadline on every call, errors as a small exception tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.client._hints import Transport
from driver_service.client._retry import (
    DEFAULT_UPLOAD_BACKOFF,
    DEFAULT_WATCH_BACKOFF,
    SERVICE_CONFIG,
    Backoff,
    channel_options,
    is_retryable,
)
from driver_service.client._settings import ClientSettings
from driver_service.client._types import DriverSnapshot, UploadReport, utc_from_ns
from driver_service.client.errors import (
    DriverServiceError,
    Unavailable,
    error_for,
    from_rpc_error,
)
from driver_service.domain import Location
from driver_service.wire import location_to_pb, pb_to_location, timestamp_to_ns

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_UPLOAD_CHUNK",
    "DEFAULT_UPLOAD_TIMEOUT_S",
    "SERVICE_CONFIG",
    "DriverClient",
    "DriverSession",
    "channel_options",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_UPLOAD_TIMEOUT_S = 300.0
#: Updates per UploadLocations call in `upload()`: the unit that is acknowledged, and resent
#: whole if its call fails (the server's summary counts one stream, not one update).
DEFAULT_UPLOAD_CHUNK = 1_000
#: How long a failed write waits to learn the server's reason for ending the session.
_ENDING_WAIT_S = 1.0
_GRPC_WRITE_RACE = "Internal error from Core"


class DriverClient:
    """Async client for driver.v1.DriverService.

    `target` is anything grpc resolves: `HOST:PORT`, `dns:///driver-service:50051` (every
    address the name resolves to) or `ipv4:10.0.0.1:50051,10.0.0.2:50051`; calls are spread
    over all of them (round_robin). GetDriver is retried on UNAVAILABLE by grpc itself;
    `watch()` reconnects and `upload()` resends unacknowledged chunks (see docs/client.md).

    `wait_for_ready=True` makes GetDriver wait (up to its deadline) for a reachable server
    instead of failing at once with UNAVAILABLE: for callers that start before the server, or
    talk to a single replica that restarts. Off by default, so a wrong target or a TLS
    mismatch is reported at once as UNAVAILABLE rather than as a deadline.

    TLS and a token: `ca`, `cert`, `key` (paths) and `token`, or `DriverClient.from_env()`
    for the settings the CLI reads (`DRIVER_SERVICE_TARGET`, `_CLIENT_CA`, `_CLIENT_CERT`,
    `_CLIENT_KEY`, `_TOKEN`). `credentials` and `metadata` are grpc's own, for anything else.

    >>> async with DriverClient("dns:///driver-service:50051") as client:
    ...     driver = await client.get_driver("drv-1")
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, object]] = (),
        wait_for_ready: bool = False,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        own = ClientSettings(target, ca, cert, key, token)
        if credentials is None:
            credentials = own.credentials()
        self.transport = Transport(tls=credentials is not None, client_cert=bool(cert))
        metadata = (*metadata, *own.metadata())
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.DriverServiceStub(self._channel)
        self._dispatch = dpb_grpc.DispatchServiceStub(self._channel)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.wait_for_ready = wait_for_ready
        self._metadata = tuple(metadata)

    @classmethod
    def from_settings(cls, settings: ClientSettings, **kwargs: Any) -> DriverClient:
        """A client for `settings` (target, TLS material, token); `kwargs` as for the
        constructor (timeout, options, …)."""
        return cls(
            settings.target,
            ca=settings.ca,
            cert=settings.cert,
            key=settings.key,
            token=settings.token,
            **kwargs,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> DriverClient:
        """A client from the `DRIVER_SERVICE_*` variables the CLI reads (the `export` line
        `make run` prints); `kwargs` as for the constructor."""
        return cls.from_settings(ClientSettings.from_env(), **kwargs)

    async def __aenter__(self) -> DriverClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def answer_offer(
        self, offer_id: str, driver_id: str, accepted: bool, *, timeout: float | None = None
    ) -> str:
        """A driver's answer to a ride offer it received on its session (needs that driver's
        token); returns the offer's state, e.g. "ACCEPTED"."""
        try:
            status = await self._dispatch.AnswerOffer(
                dpb.AnswerOfferRequest(offer_id=offer_id, driver_id=driver_id, accepted=accepted),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.transport) from None
        return dpb.CommandState.Name(status.state).removeprefix("COMMAND_STATE_")

    async def get_driver(
        self,
        driver_id: str,
        *,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> DriverSnapshot:
        """The driver's status and position. Retried by grpc on UNAVAILABLE (4 attempts in
        all, 0.1 s to 2 s apart, within `timeout`)."""
        try:
            msg = await self._stub.GetDriver(
                pb.GetDriverRequest(driver_id=driver_id),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
                wait_for_ready=self.wait_for_ready if wait_for_ready is None else wait_for_ready,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.transport) from None
        return DriverSnapshot(
            msg.driver_id,
            msg.status,
            msg.latitude,
            msg.longitude,
            utc_from_ns(timestamp_to_ns(msg.last_seen_at)),
        )

    async def watch(
        self,
        driver_id: str,
        *,
        reconnect: bool = True,
        backoff: Backoff = DEFAULT_WATCH_BACKOFF,
    ) -> AsyncIterator[Location]:
        """Live locations of one driver: the latest known at once, then each newer one.

        Runs until the caller stops iterating; no deadline, as it is meant to stay open. When
        the stream fails for a reason a retry can fix (the server stops or restarts, a
        replica goes away, the connection drops: UNAVAILABLE and the like), it reconnects
        after a jittered, capped exponential `backoff` — forever unless `backoff.max_attempts`
        says otherwise — and continues from the latest location: the server sends its latest
        at once, and anything not newer than what was already yielded is skipped. So a
        watcher never sees a duplicate or an older location, but may miss intermediate ones
        sent while it was reconnecting (query history for every point).

        Raises at once on codes a retry cannot fix (INVALID_ARGUMENT, UNAUTHENTICATED,
        PERMISSION_DENIED, …), and `Unavailable` (or the last error) once `max_attempts`
        attempts in a row have failed. `reconnect=False`: raise on the first failure."""
        request = pb.StreamLocationRequest(driver_id=driver_id)
        last_ns: int | None = None
        failures = 0
        while True:
            call = self._stub.StreamLocation(request, metadata=self._metadata)
            try:
                async for msg in call:
                    failures = 0  # a server answered: the next outage starts afresh
                    location = pb_to_location(msg)
                    if last_ns is None or location.recorded_at_ns > last_ns:
                        last_ns = location.recorded_at_ns
                        yield location
                error: DriverServiceError = Unavailable(
                    grpc.StatusCode.UNAVAILABLE, "the server ended the location stream"
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.transport)
            finally:
                call.cancel()
            failures += 1
            if not reconnect or not is_retryable(error.code) or backoff.gives_up_after(failures):
                raise error
            delay = backoff.delay(failures)
            log.info("watch %s: %s; reconnecting in %.2f s", driver_id, error, delay)
            await asyncio.sleep(delay)

    async def upload(
        self,
        locations: Iterable[Location] | AsyncIterable[Location],
        *,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        backoff: Backoff = DEFAULT_UPLOAD_BACKOFF,
    ) -> UploadReport:
        """Upload locations in chunks of `chunk_size`, one UploadLocations call per chunk;
        resend only what was not acknowledged.

        A chunk is acknowledged when its call's summary arrives; its counts are then final
        (updates the server rejected as invalid or over its rate are counted as received and
        not persisted, and are not resent). If the call fails before that for a reason a
        retry can fix (UNAVAILABLE: server stopped or restarting, connection lost, …), the
        whole chunk is sent again on a new call after a jittered `backoff`, up to
        `backoff.max_attempts` failures in a row (10 by default), then the error is raised:
        earlier chunks are stored, the failed chunk and the rest may not be. Resending is
        safe: history is idempotent on (driver, timestamp) and the current location never
        moves back. Codes a retry cannot fix (INVALID_ARGUMENT, PERMISSION_DENIED, …) raise
        at once. `timeout` is the deadline of each chunk's call.

        The source is read lazily (at most one chunk is held in memory), so a live feed's
        updates are sent as they come. The report sums the chunks' summaries."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        source = _Source(locations)
        deadline = self.upload_timeout if timeout is None else timeout
        received = persisted = chunks = retries = 0
        first_session = ""
        while True:
            # Peek before opening a call, so input ending at a chunk boundary opens none (an
            # empty input still makes one call, for the server's zero counts and session id).
            head = await source.next()
            if head is None and chunks > 0:
                break
            chunk = [] if head is None else [head]
            failures = 0
            while True:
                call = self._stub.UploadLocations(timeout=deadline, metadata=self._metadata)  # type: ignore[call-arg]
                try:
                    summary = await _send_chunk(call, chunk, source, chunk_size)
                    break
                except (grpc.RpcError, asyncio.InvalidStateError):
                    error = await _final_error(call, self.transport)
                failures += 1
                if not is_retryable(error.code) or backoff.gives_up_after(failures):
                    raise error from None
                retries += 1
                delay = backoff.delay(failures)
                log.info(
                    "upload: chunk %d (%d updates) failed: %s; resending in %.2f s",
                    chunks + 1,
                    len(chunk),
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
            received += summary.received_count
            persisted += summary.persisted_count
            if chunks == 0:
                first_session = summary.session_id
            chunks += 1
            if source.exhausted:
                break
        return UploadReport(received, persisted, first_session, chunks, retries)

    async def session(self) -> DriverSession:
        """Open a DriverSession; use as `async with await client.session() as s:`.

        A session is not resumed by the client: its server-side state (the driver's open
        session, commands in flight) belongs to one server. When it ends with a retryable
        error (`Unavailable`: server stopped, replica gone), open a new session after a
        backoff and send the driver's latest location again (see docs/client.md)."""
        session = DriverSession(
            self._stub.DriverSession(metadata=self._metadata),  # type: ignore[call-arg]
            self.transport,
        )
        session.start()
        return session


class _Source:
    """The caller's locations, read one at a time as protobuf messages."""

    def __init__(self, locations: Iterable[Location] | AsyncIterable[Location]) -> None:
        self._it = _aiter(locations)
        self.exhausted = False

    async def next(self) -> pb.LocationUpdate | None:
        if self.exhausted:
            return None
        location = await anext(self._it, None)
        if location is None:
            self.exhausted = True
            return None
        return location_to_pb(location)


async def _aiter(
    locations: Iterable[Location] | AsyncIterable[Location],
) -> AsyncIterator[Location]:
    if isinstance(locations, AsyncIterable):
        async for location in locations:
            yield location
    else:
        for location in locations:
            yield location


async def _send_chunk(
    call: grpc.aio.StreamUnaryCall[pb.LocationUpdate, pb.UploadSummary],
    chunk: list[pb.LocationUpdate],
    source: _Source,
    chunk_size: int,
) -> pb.UploadSummary:
    """One attempt at one chunk: resend what it holds, fill it up from the source (keeping
    every update read, so a failed attempt can resend it), and wait for the summary."""
    try:
        for msg in list(chunk):
            await call.write(msg)
        while len(chunk) < chunk_size and (msg_or_none := await source.next()) is not None:
            chunk.append(msg_or_none)
            await call.write(msg_or_none)
        await call.done_writing()
        return await call
    except (grpc.RpcError, asyncio.InvalidStateError):
        raise  # the call has ended: its status says why (cancelling could mask it)
    except BaseException:
        call.cancel()  # the source failed or the caller cancelled: end the call
        raise


async def _final_error(call: grpc.aio.Call, transport: Transport) -> DriverServiceError:
    """Why a stream call that failed a write or a read ended. grpc.aio may first report
    INTERNAL "Internal error from Core" for a write that raced the end of the call; the real
    status replaces it a moment later (see DriverSession._settled_error)."""
    deadline = time.monotonic() + _ENDING_WAIT_S
    while True:
        code = await call.code()
        details = await call.details()
        race = code is grpc.StatusCode.INTERNAL and details == _GRPC_WRITE_RACE
        if code is grpc.StatusCode.OK:  # ended before reading all we sent: resend
            return Unavailable(grpc.StatusCode.UNAVAILABLE, "upload call ended early")
        if not race or time.monotonic() > deadline:
            return error_for(code, details or "", transport)
        await asyncio.sleep(0.01)


class DriverSession:
    """One bidirectional driver session: send events, await pongs, receive server commands."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[pb.DriverEvent, pb.ServerCommand],
        transport: Transport | None = None,
    ) -> None:
        self._call = call
        self._transport = transport
        self._pongs: deque[asyncio.Future[int]] = deque()
        self._commands: asyncio.Queue[pb.ServerCommand | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._error: DriverServiceError | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def __aenter__(self) -> DriverSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self._call.cancel()

    async def _read(self) -> None:
        try:
            async for command in self._call:
                if command.WhichOneof("command") == "pong":
                    if self._pongs:
                        waiter = self._pongs.popleft()
                        if not waiter.done():
                            waiter.set_result(command.pong.server_ts_ms)
                else:
                    self._commands.put_nowait(command)
        except grpc.RpcError as error:
            self._error = await self._settled_error(from_rpc_error(error, self._transport))
        except asyncio.CancelledError:
            self._error = Unavailable(grpc.StatusCode.CANCELLED, "session closed")
        finally:
            ended = self._error or Unavailable(grpc.StatusCode.UNAVAILABLE, "session ended")
            while self._pongs:
                waiter = self._pongs.popleft()
                if not waiter.done():
                    waiter.set_exception(ended)
            self._commands.put_nowait(None)

    async def _write(self, event: pb.DriverEvent) -> None:
        try:
            await self._call.write(event)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            # The write failed because the call ended: report why the server ended it, which
            # the reader learns, rather than the write's own (often generic) error.
            raise await self._ending_error(error) from None

    async def _ending_error(self, error: BaseException) -> DriverServiceError:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), _ENDING_WAIT_S)
        if self._error is not None:
            return self._error
        if isinstance(error, grpc.RpcError):
            return from_rpc_error(error, self._transport)
        return Unavailable(grpc.StatusCode.UNAVAILABLE, "session already ended")

    async def _settled_error(self, error: DriverServiceError) -> DriverServiceError:
        """Work around a grpc.aio race: a write that fails because the server has just ended
        the call sets its status to INTERNAL "Internal error from Core"; the server's real
        status (e.g. INVALID_ARGUMENT) replaces it a moment later. Ask the call again."""
        if error.code is not grpc.StatusCode.INTERNAL or error.details != _GRPC_WRITE_RACE:
            return error
        deadline = time.monotonic() + _ENDING_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            code = await self._call.code()
            if code is not grpc.StatusCode.INTERNAL:
                return error_for(code, await self._call.details(), self._transport)
        return error

    @property
    def error(self) -> DriverServiceError | None:
        """Why the session ended, once it has ended with an error (else None)."""
        return self._error

    async def send_location(self, location: Location) -> None:
        await self._write(pb.DriverEvent(location=location_to_pb(location)))

    async def change_status(self, driver_id: str, new_status: str) -> None:
        await self._write(
            pb.DriverEvent(
                status_change=pb.DriverStatusChange(driver_id=driver_id, new_status=new_status)
            )
        )

    async def heartbeat(self, *, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, float]:
        """Ping the server; return (server time in ms, round trip in seconds)."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pongs.append(waiter)
        started = time.perf_counter()
        try:
            await self._write(
                pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=time.time_ns() // 1_000_000))
            )
        except BaseException:
            self._pongs.remove(waiter)
            waiter.cancel()
            raise
        try:
            server_ts_ms = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise DriverServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no pong within {timeout} s"
            ) from None
        return server_ts_ms, time.perf_counter() - started

    async def commands(self) -> AsyncIterator[pb.ServerCommand]:
        """Server-pushed commands (ride offers, navigation) until the session ends."""
        while (command := await self._commands.get()) is not None:
            yield command
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Finish sending, wait for the server to end the session; raise if it failed."""
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        if self._reader is not None:
            await self._reader
        if self._error is not None:
            raise self._error
