"""Every series the server exports, bound once per server: `ServiceMetrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import grpc
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from driver_service.domain import Rejection
from driver_service.observability.metrics.core import (
    CounterFamily,
    CounterReading,
    GaugeFamily,
    HistogramFamily,
    LoopCounter,
    LoopHistogram,
)
from driver_service.observability.metrics.grpc_labels import (
    UNARY,
    grpc_code_label,
    split_method,
)
from driver_service.ports import HistoryStats

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
#: Webhook delivery lag, event time to acknowledgement: ~10 ms on a LAN to a day of retries.
LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0,
)  # fmt: skip
#: Updates per group commit: one when traffic trickles, tens of thousands under a flood.
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)


class MethodMetrics:
    """The label children of one RPC method, bound once, so a call touches no label dicts
    (one dict lookup per call finds this object; one per code finds the handled child).
    Every child is a Loop* instrument: updated only on the event-loop thread, lock-free."""

    __slots__ = ("grpc_type", "handled", "handled_ok", "handling", "msg_received", "msg_sent",
                 "open_streams", "started")  # fmt: skip

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
        #: handled[OK] without the lookup: a StatusCode hashes in Python (Enum.__hash__).
        self.handled_ok = self.handled[grpc.StatusCode.OK]
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
        self.webhook_deliveries = CounterFamily(
            "driver_service_webhook_deliveries_total",
            "Webhook POST attempts by endpoint and outcome (delivered: 2xx; http_error: any"
            " other status; no_response: timeout, refused, reset, TLS; refused_target: a URL"
            " or address the server may not call).",
            ("endpoint", "outcome"),
            reg,
        )
        self.webhook_attempt_seconds = HistogramFamily(
            "driver_service_webhook_attempt_seconds",
            "Duration of one webhook POST attempt, whatever its outcome.",
            (),
            reg,
            buckets=RPC_BUCKETS,
        ).labels()
        self.webhook_lag_seconds = HistogramFamily(
            "driver_service_webhook_delivery_lag_seconds",
            "Event time to the receiver's 2xx, retries included.",
            (),
            reg,
            buckets=LAG_BUCKETS,
        ).labels()
        self.webhook_dead_lettered = CounterFamily(
            "driver_service_webhook_dead_lettered_total",
            "Events set aside as dead letters after their last attempt, by endpoint.",
            ("endpoint",),
            reg,
        )
        self.http_requests = CounterFamily(
            "driver_service_http_requests_total",
            "HTTP requests of the JSON API, streams and map, by route, method and status.",
            ("route", "method", "status"),
            reg,
        )
        self.http_seconds = HistogramFamily(
            "driver_service_http_request_seconds",
            "Time from an HTTP request to its response's end (whole stream for SSE).",
            ("route", "method"),
            reg,
            buckets=RPC_BUCKETS,
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

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request; `route` is the route's name (bounded), never the path."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method).observe(seconds)

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

    def watch_history(
        self, stats: Callable[[], HistoryStats], expired: Callable[[], float] = lambda: 0.0
    ) -> None:
        """Export the history's size from `stats` (the retention loop's last figures, at
        most an interval old, also while a backlog drains) and the fixes it has expired."""
        reg = self.registry
        CounterReading(
            "driver_service_history_expired_fixes",
            "Fixes removed by history retention since start (PostgreSQL: dropped partitions"
            " count by the planner's estimate).",
            expired,
            reg,
        )
        Gauge(
            "driver_service_history_rows",
            "Fixes of location history stored (PostgreSQL: the planner's estimate).",
            registry=reg,
        ).set_function(lambda: stats().rows)
        Gauge(
            "driver_service_history_bytes",
            "Bytes of the store (SQLite: the whole file) or of history (PostgreSQL), approximate.",
            registry=reg,
        ).set_function(lambda: stats().bytes)
        Gauge(
            "driver_service_history_oldest_fix_seconds",
            "Fix time (Unix seconds) of the oldest fix kept; 0 while history is empty.",
            registry=reg,
        ).set_function(lambda: (stats().oldest_ns or 0) / 1e9)

    def watch_read_cache(
        self,
        entries: Callable[[], float],
        serving: Callable[[], float],
        hits: Callable[[], float],
        fills: Callable[[], float],
        evictions: Callable[[], float],
    ) -> None:
        """Export GetDriver's read cache (PostgreSQL + Redis): its size, whether it serves
        now, and its counts (read at scrape time: nothing is updated on the read path)."""
        reg = self.registry
        Gauge(
            "driver_service_read_cache_entries",
            "Drivers held by this process's read cache (each with a pub/sub channel).",
            registry=reg,
        ).set_function(entries)
        Gauge(
            "driver_service_read_cache_serving",
            "1 while the read cache answers reads (Redis confirmed within the staleness"
            " bound), 0 while every read falls back to Redis or the store.",
            registry=reg,
        ).set_function(serving)
        for name, what, read in (
            ("hits", "GetDriver reads answered from the read cache.", hits),
            ("fills", "First reads that subscribed to a driver and cached it.", fills),
            ("evictions", "Entries evicted (least recently read) to stay bounded.", evictions),
        ):
            CounterReading(f"driver_service_read_cache_{name}", what, read, reg)

    def count_webhook_attempt(
        self, endpoint: str, outcome: str, duration_s: float, lag_s: float | None
    ) -> None:
        self.webhook_deliveries.labels(endpoint, outcome).inc()
        self.webhook_attempt_seconds.observe(duration_s)
        if lag_s is not None:
            self.webhook_lag_seconds.observe(max(0.0, lag_s))

    def count_dead_letter(self, endpoint: str) -> None:
        self.webhook_dead_lettered.labels(endpoint).inc()

    def watch_webhooks(
        self,
        queue_depth: Callable[[], float],
        open_circuits: Callable[[], float],
        dead_letters: Callable[[], float],
    ) -> None:
        """Export delivery's last measurements (taken every second by its loop)."""
        reg = self.registry
        Gauge(
            "driver_service_webhook_queue_depth",
            "Events logged after the cursors of active endpoints (an upper bound: ids may"
            " have holes; filtered-out events count until skipped).",
            registry=reg,
        ).set_function(queue_depth)
        Gauge(
            "driver_service_webhook_open_circuits",
            "Endpoints whose failures in a row reached the circuit threshold.",
            registry=reg,
        ).set_function(open_circuits)
        Gauge(
            "driver_service_webhook_dead_letters",
            "Dead letters stored (all endpoints), replayable.",
            registry=reg,
        ).set_function(dead_letters)

    def watch_event_sink(
        self, sink: str, behind: Callable[[], float], up: Callable[[], float]
    ) -> tuple[Callable[[int, list[float]], None], Callable[[], None]]:
        """Metrics of publishing to a broker: what to call per acknowledged page and per
        failure (the publisher's hooks)."""
        reg = self.registry
        published = CounterFamily(
            "driver_service_event_sink_published_total",
            "Events the broker acknowledged (a republished copy it deduplicated counts too).",
            ("sink",),
            reg,
        ).labels(sink)
        failures = CounterFamily(
            "driver_service_event_sink_failures_total",
            "Failed publish attempts (no connection, no ack within the timeout, refused).",
            ("sink",),
            reg,
        ).labels(sink)
        lag = HistogramFamily(
            "driver_service_event_sink_lag_seconds",
            "Event time to the broker's acknowledgement.",
            ("sink",),
            reg,
            buckets=LAG_BUCKETS,
        ).labels(sink)
        Gauge(
            "driver_service_event_sink_behind",
            "Events logged but not yet acknowledged by the broker (an upper bound).",
            ("sink",),
            registry=reg,
        ).labels(sink).set_function(behind)
        Gauge(
            "driver_service_event_sink_up",
            "1 while publishing to the broker works, 0 while it fails.",
            ("sink",),
            registry=reg,
        ).labels(sink).set_function(up)

        def on_published(count: int, lags_s: list[float]) -> None:
            published.inc(count)
            for lag_s in lags_s:
                lag.observe(max(0.0, lag_s))

        return on_published, failures.inc

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
