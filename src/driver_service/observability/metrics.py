"""Prometheus metrics of one server, on a registry of its own, cheap on the hot path.

The gRPC series carry go-grpc-prometheus's names, labels and code strings, so existing
dashboards and alerts work unchanged. Everything else is prefixed `driver_service_`.
`ServiceMetrics` is created by the composition root (never at import time), so several
servers and tests in one process never share or collide on series. Every per-call and
per-update metric is a plain-Python instrument updated without a lock on the event-loop thread
(`LoopCounter`, `LoopGauge`, `LoopHistogram`), rendered by a collector at scrape time exactly
as prometheus_client renders its own, minus the `_created` series (go-grpc-prometheus has none).

Example::

    metrics = ServiceMetrics()
    repository = InstrumentedRepository(await SqliteRepository.open(path), metrics)
    bus = InstrumentedBus(MemoryBus(), metrics)
    server = grpc.aio.server(interceptors=server_interceptors(auth, metrics=metrics))
    body, content_type = metrics.render()
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from itertools import pairwise
from typing import Final, Generic, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from driver_service.domain import Driver, Location, Rejection, Status
from driver_service.ports import DriverRepository, LocationBus, Recorded, Subscription

#: RPC latency: from 100 µs (an in-memory read) to 10 s (a slow store); streams beyond are +Inf.
RPC_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
#: Store and bus latency: a commit of one row is ~100 µs; thousands of rows take ~100 ms.
IO_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
)  # fmt: skip
#: Updates per group commit: one when traffic trickles, tens of thousands under a flood.
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)

UNARY: Final = "unary"
CLIENT_STREAM: Final = "client_stream"
SERVER_STREAM: Final = "server_stream"
BIDI_STREAM: Final = "bidi_stream"


def grpc_code_label(code: grpc.StatusCode) -> str:
    """The code as Go's `codes.Code.String()` spells it ("NotFound", "Canceled"), the value
    go-grpc-prometheus puts in `grpc_code`."""
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """go-grpc-prometheus's `grpc_type` for an RPC's shape."""
    if request_streaming:
        return BIDI_STREAM if response_streaming else CLIENT_STREAM
    return SERVER_STREAM if response_streaming else UNARY


def split_method(full_method: str) -> tuple[str, str]:
    """ "/pkg.Service/Method" -> ("pkg.Service", "Method")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or "unknown", method or "unknown")


# Instruments of the hot paths. prometheus_client's take a lock and cost 1-2.3 µs per update
# (~7 µs per unary call); these are plain attributes. That is safe because every update runs on
# the server's event-loop thread (the call pipeline, InstrumentedRepository/InstrumentedBus
# after each await, the ingest path counting rejections) and /metrics is rendered on that
# thread too, by the admin server: updates never interleave with each other or with a scrape.
# The SQLite writer thread never touches a metric (it only runs the store's blocking calls).
# A reader on another thread, should there ever be one, reads whole floats under the GIL; at
# worst a histogram's buckets and sum disagree by the one observation in progress.


class LoopCounter:
    """A counter child; `inc` is called only on the event-loop thread (no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopGauge:
    """A gauge child; `inc`/`dec` are called only on the event-loop thread (no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class LoopHistogram:
    """A histogram child; `observe` is called only on the event-loop thread (no lock).
    Counts are kept per bucket and made cumulative at scrape time; `le` is inclusive, as in
    prometheus_client: a value equal to a bound lands in that bound's bucket (bisect_left
    finds the first bound >= value), anything above the last bound in +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


_Child = TypeVar("_Child", LoopCounter, LoopGauge, LoopHistogram)
_Exposed = TypeVar("_Exposed", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


class _Family(Collector, Generic[_Child, _Exposed]):
    """One metric name with its label children, registered on `registry` as a collector that
    builds the metric family only at scrape time. Children are created by `labels()` (once
    per label values, then reused) and rendered in creation order, as prometheus_client
    does; a family without labels has its one child from the start, so it renders as 0."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self.labels()
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        """The child of these label values (in `labelnames` order), created on first use."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def describe(self) -> Iterable[Metric]:
        return [self._empty()]

    def collect(self) -> Iterable[Metric]:
        family = self._empty()
        for values, child in self._children.items():
            self._add(family, list(values), child)
        return [family]

    @abstractmethod
    def _new_child(self) -> _Child: ...

    @abstractmethod
    def _empty(self) -> _Exposed: ...

    @abstractmethod
    def _add(self, family: _Exposed, values: list[str], child: _Child) -> None: ...


class CounterFamily(_Family[LoopCounter, CounterMetricFamily]):
    """Counters by label (prometheus_client's `Counter` with `.labels()`), without `_created`."""

    def _new_child(self) -> LoopCounter:
        return LoopCounter()

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: CounterMetricFamily, values: list[str], child: LoopCounter) -> None:
        family.add_metric(values, child.value)


class GaugeFamily(_Family[LoopGauge, GaugeMetricFamily]):
    """Gauges by label (prometheus_client's `Gauge` with `.labels()`)."""

    def _new_child(self) -> LoopGauge:
        return LoopGauge()

    def _empty(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: GaugeMetricFamily, values: list[str], child: LoopGauge) -> None:
        family.add_metric(values, child.value)


class HistogramFamily(_Family[LoopHistogram, HistogramMetricFamily]):
    """Histograms by label (prometheus_client's `Histogram` with `.labels()`), without
    `_created`; `buckets` are the finite upper bounds, ascending (+Inf is implied)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or any(a >= b for a, b in pairwise(bounds)) or "le" in labelnames:
            raise ValueError(f"{name}: buckets must ascend strictly; 'le' is reserved")
        self.bounds = bounds
        #: The `le` strings exactly as prometheus_client renders them ("0.0001", "+Inf").
        self.le: tuple[str, ...] = tuple(
            floatToGoString(b)  # type: ignore[no-untyped-call]
            for b in (*bounds, math.inf)
        )
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> LoopHistogram:
        return LoopHistogram(self.bounds)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: HistogramMetricFamily, values: list[str], child: LoopHistogram) -> None:
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for le, count in zip(self.le, child.counts, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        family.add_metric(values, buckets, child.sum)


class MethodMetrics:
    """The label children of one RPC method, bound once, so a call touches no label dicts
    (one dict lookup per call finds this object; one per code finds the handled child).
    Every child is a Loop* instrument: updated only on the event-loop thread, lock-free."""

    __slots__ = ("grpc_type", "handled", "handling", "msg_received", "msg_sent", "open_streams",
                 "started")  # fmt: skip

    def __init__(self, metrics: ServiceMetrics, full_method: str, rpc_type: str) -> None:
        service, method = split_method(full_method)
        labels = (service, method, rpc_type)
        self.grpc_type = rpc_type
        self.started = metrics.rpc_started.labels(*labels)
        self.handling = metrics.rpc_handling_seconds.labels(*labels)
        self.msg_received = metrics.rpc_msg_received.labels(*labels)
        self.msg_sent = metrics.rpc_msg_sent.labels(*labels)
        # Every code bound up front (as go-grpc-prometheus does): rate() over a code that
        # has not happened yet is 0, not "no data", and no call pays to create a child.
        self.handled = {
            code: metrics.rpc_handled.labels(*labels, grpc_code_label(code))
            for code in grpc.StatusCode
        }
        self.open_streams = (
            None if rpc_type == UNARY else metrics.rpc_open_streams.labels(service, method)
        )


class ServiceMetrics:
    """Every metric the service exports, registered on `self.registry` only."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        rpc_labels = ("grpc_service", "grpc_method", "grpc_type")
        # Registered in exposition order; every per-call or per-update metric is a family of
        # Loop* children (see above), only the gauges read by a function at scrape time are
        # prometheus_client's own.
        self.rpc_started = CounterFamily(
            "grpc_server_started_total", "RPCs started on the server.", rpc_labels, reg
        )
        self.rpc_handled = CounterFamily(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*rpc_labels, "grpc_code"),
            reg,
        )
        self.rpc_handling_seconds = HistogramFamily(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (whole stream for streaming RPCs).",
            rpc_labels,
            reg,
            buckets=RPC_BUCKETS,
        )
        self.rpc_msg_received = CounterFamily(
            "grpc_server_msg_received_total",
            "Request messages received by the server (1 per unary call).",
            rpc_labels,
            reg,
        )
        self.rpc_msg_sent = CounterFamily(
            "grpc_server_msg_sent_total",
            "Response messages sent by the server (1 per successful unary call).",
            rpc_labels,
            reg,
        )
        self.rpc_open_streams = GaugeFamily(
            "grpc_server_open_streams",
            "Streaming RPCs in progress.",
            ("grpc_service", "grpc_method"),
            reg,
        )
        self.store_seconds = HistogramFamily(
            "driver_service_store_seconds",
            "Latency of store operations, failed ones included.",
            ("operation",),
            reg,
            buckets=IO_BUCKETS,
        )
        self.store_errors = CounterFamily(
            "driver_service_store_errors_total",
            "Store operations that raised.",
            ("operation",),
            reg,
        )
        self.bus_publish_seconds = HistogramFamily(
            "driver_service_bus_publish_seconds",
            "Latency of publishing committed locations to live watchers.",
            (),
            reg,
            buckets=IO_BUCKETS,
        ).labels()
        self.bus_publish_errors = CounterFamily(
            "driver_service_bus_publish_errors_total",
            "Publishes to the bus that raised.",
            (),
            reg,
        ).labels()
        self.updates_rejected = CounterFamily(
            "driver_service_updates_rejected_total",
            "Location updates refused, by reason (invalid, rate_limited before storage;"
            " conflict: another fix is stored for the driver and timestamp).",
            ("reason",),
            reg,
        )
        self.sessions_open = Gauge(
            "driver_service_sessions_open", "DriverSession streams open.", registry=reg
        )
        self.watchers = GaugeFamily(
            "driver_service_watchers", "Live location subscriptions open.", (), reg
        ).labels()
        self.stale_drivers = Gauge(
            "driver_service_stale_drivers",
            "Known non-OFFLINE drivers with no event for stale_after (excluded from dispatch).",
            registry=reg,
        )
        self.commit_batch_size = HistogramFamily(
            "driver_service_commit_batch_size",
            "Location updates per group commit (one store transaction).",
            (),
            reg,
            buckets=BATCH_BUCKETS,
        ).labels()
        self.background_task_failures = CounterFamily(
            "driver_service_background_task_failures_total",
            "Supervised background tasks that ended unexpectedly, by task (restarted or fatal).",
            ("task",),
            reg,
        )
        # Pre-bound children for the hot paths.
        #: One child per reason, made at start so every reason is exported from zero.
        self.rejected = {reason: self.updates_rejected.labels(reason) for reason in Rejection}
        self._methods: dict[str, MethodMetrics] = {}
        self._store_ops: dict[str, tuple[LoopHistogram, LoopCounter]] = {}

    def method(self, full_method: str, rpc_type: str) -> MethodMetrics:
        """The bound children of one method, created on its first call. Only methods the
        server actually has get here (unknown paths have no handler), so label cardinality
        is bounded by the services registered."""
        found = self._methods.get(full_method)
        if found is None or found.grpc_type != rpc_type:
            found = self._methods[full_method] = MethodMetrics(self, full_method, rpc_type)
        return found

    def store_operation(self, operation: str) -> tuple[LoopHistogram, LoopCounter]:
        """(latency child, error child) of one store operation, bound once."""
        found = self._store_ops.get(operation)
        if found is None:
            found = self._store_ops[operation] = (
                self.store_seconds.labels(operation),
                self.store_errors.labels(operation),
            )
        return found

    def count_sessions(self, count: Callable[[], float]) -> None:
        """Read the open-session gauge from `count` at scrape time (no bookkeeping per call).
        Without it, `sessions_open.inc()/.dec()` may be used instead."""
        self.sessions_open.set_function(count)

    def count_task_failure(self, task: str) -> None:
        """Count one unexpected end of the supervised task `task`."""
        self.background_task_failures.labels(task).inc()

    def count_stale_drivers(self, count: Callable[[], float]) -> None:
        """Read the stale-driver gauge from `count` (the dispatch sweeper's last result)."""
        self.stale_drivers.set_function(count)

    def watch_process(self, loop: asyncio.AbstractEventLoop) -> None:
        """Export the process's memory, CPU and descriptors (`process_*`) and the tasks alive in
        `loop`, so a leak shows from outside (the fault-injection tests compare both before and
        after a storm). Call once, from the process that serves. The task count is taken at
        scrape time: the admin port renders on the loop's own thread, and `all_tasks` copies
        its registry with retries, so even a scrape from another thread would be safe."""
        ProcessCollector(registry=self.registry)
        Gauge(
            "driver_service_event_loop_tasks",
            "asyncio tasks not yet done in the server's event loop.",
            registry=self.registry,
        ).set_function(lambda: len(asyncio.all_tasks(loop)))

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class InstrumentedRepository:
    """A DriverRepository that times every operation and counts failures; `record_locations`
    is the group commit, so its batch size is observed too."""

    def __init__(self, inner: DriverRepository, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._get = metrics.store_operation("get_driver")
        self._record = metrics.store_operation("record_locations")
        self._status = metrics.store_operation("set_status")
        self._history = metrics.store_operation("location_history")
        self._ping = metrics.store_operation("ping")
        self._batch = metrics.commit_batch_size

    async def get_driver(self, driver_id: str) -> Driver | None:
        seconds, errors = self._get
        start = time.perf_counter()
        try:
            return await self.inner.get_driver(driver_id)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        seconds, errors = self._record
        self._batch.observe(len(locations))
        start = time.perf_counter()
        try:
            return await self.inner.record_locations(locations)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        seconds, errors = self._status
        start = time.perf_counter()
        try:
            return await self.inner.set_status(driver_id, status, at_ns)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        seconds, errors = self._history
        start = time.perf_counter()
        try:
            return await self.inner.location_history(driver_id, start_ns, end_ns, limit)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        return self.inner.drivers_seen_since(seen_since_ns, page_size)

    async def ping(self) -> None:
        seconds, errors = self._ping
        start = time.perf_counter()
        try:
            await self.inner.ping()
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def close(self) -> None:
        await self.inner.close()


class _CountedSubscription:
    """A subscription that leaves the watcher gauge exactly once, however often it is closed."""

    __slots__ = ("_gauge", "_inner", "_open")

    def __init__(self, inner: Subscription, gauge: LoopGauge) -> None:
        self._inner = inner
        self._gauge = gauge
        self._open = True
        gauge.inc()

    async def next(self) -> Location:
        return await self._inner.next()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._gauge.dec()
        self._inner.close()


class InstrumentedBus:
    """A LocationBus that times publishes, counts their failures and open subscriptions."""

    def __init__(self, inner: LocationBus, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self._seconds = metrics.bus_publish_seconds
        self._errors = metrics.bus_publish_errors
        self._watchers = metrics.watchers

    async def publish(self, locations: Sequence[Location]) -> None:
        start = time.perf_counter()
        try:
            await self.inner.publish(locations)
        except Exception:
            self._errors.inc()
            raise
        finally:
            self._seconds.observe(time.perf_counter() - start)

    async def subscribe(self, driver_id: str) -> Subscription:
        return _CountedSubscription(await self.inner.subscribe(driver_id), self._watchers)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
