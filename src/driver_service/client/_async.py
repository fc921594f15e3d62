"""The async client: a deadline on every call, errors as a small exception tree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.api.convert import location_to_pb, pb_to_location, timestamp_to_ns
from driver_service.client._types import DriverSnapshot, UploadReport, utc_from_ns
from driver_service.client.errors import (
    _BY_CODE,
    DriverServiceError,
    Unavailable,
    from_rpc_error,
)
from driver_service.domain import Location

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_UPLOAD_TIMEOUT_S = 300.0
#: How long a failed write waits to learn the server's reason for ending the session.
_ENDING_WAIT_S = 1.0
_GRPC_WRITE_RACE = "Internal error from Core"

#: Spread calls over every address the target resolves to; gRPC's default, pick_first,
#: sends everything to one server.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(extra: Sequence[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        *extra,
    ]


class DriverClient:
    """Async client for driver.v1.DriverService.

    >>> async with DriverClient("127.0.0.1:50051") as client:
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
    ) -> None:
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.DriverServiceStub(self._channel)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._metadata = tuple(metadata)

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

    async def get_driver(self, driver_id: str, *, timeout: float | None = None) -> DriverSnapshot:
        try:
            msg = await self._stub.GetDriver(
                pb.GetDriverRequest(driver_id=driver_id),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return DriverSnapshot(
            msg.driver_id,
            msg.status,
            msg.latitude,
            msg.longitude,
            utc_from_ns(timestamp_to_ns(msg.last_seen_at)),
        )

    async def watch(self, driver_id: str) -> AsyncIterator[Location]:
        """Live locations of one driver: the latest known at once, then each new one.
        Runs until the caller stops iterating; no deadline, as it is meant to stay open."""
        call = self._stub.StreamLocation(
            pb.StreamLocationRequest(driver_id=driver_id), metadata=self._metadata
        )
        try:
            async for msg in call:
                yield pb_to_location(msg)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def upload(
        self,
        locations: Iterable[Location] | AsyncIterable[Location],
        *,
        timeout: float | None = None,
    ) -> UploadReport:
        """Stream locations in one UploadLocations call; the report says how many the server
        durably stored."""

        async def messages() -> AsyncIterator[pb.LocationUpdate]:
            if isinstance(locations, AsyncIterable):
                async for loc in locations:
                    yield location_to_pb(loc)
            else:
                for loc in locations:
                    yield location_to_pb(loc)

        try:
            msg = await self._stub.UploadLocations(
                messages(),
                timeout=self.upload_timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return UploadReport(msg.received_count, msg.persisted_count, msg.session_id)

    async def session(self) -> DriverSession:
        """Open a DriverSession; use as `async with await client.session() as s:`."""
        session = DriverSession(
            self._stub.DriverSession(metadata=self._metadata)  # type: ignore[call-arg]
        )
        session.start()
        return session


class DriverSession:
    """One bidirectional driver session: send events, await pongs, receive server commands."""

    def __init__(self, call: grpc.aio.StreamStreamCall[pb.DriverEvent, pb.ServerCommand]) -> None:
        self._call = call
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
            self._error = await self._settled_error(from_rpc_error(error))
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
            return from_rpc_error(error)
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
                return _BY_CODE.get(code, DriverServiceError)(code, await self._call.details())
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
