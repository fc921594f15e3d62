"""The event-loop instruments render exactly what prometheus_client renders for the same
updates (dashboards read the text, not our classes), and ServiceMetrics keeps every series
name, type and help text dashboards depend on."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from driver_service.observability.metrics.catalogue import (
    BATCH_BUCKETS,
    IO_BUCKETS,
    RPC_BUCKETS,
    ServiceMetrics,
)
from driver_service.observability.metrics.core import CounterFamily, GaugeFamily, HistogramFamily

LABELS = ("grpc_service", "grpc_method", "grpc_type")
UNARY = ("driver.v1.DriverService", "GetDriver", "unary")
STREAM = ("driver.v1.DriverService", "StreamLocation", "server_stream")


def text(registry: CollectorRegistry) -> str:
    """The exposition without prometheus_client's `_created` series, which the event-loop
    instruments do not have (go-grpc-prometheus has none either)."""
    lines = generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


def on_bounds_and_beyond(bounds: tuple[float, ...]) -> list[float]:
    """Every bound exactly, just below and above it, zero, and far beyond the last bound."""
    values: list[float] = [0.0, bounds[-1] * 10, math.inf]
    for bound in bounds:
        values += [bound, math.nextafter(bound, 0), math.nextafter(bound, math.inf)]
    return values


@pytest.mark.parametrize("buckets", [RPC_BUCKETS, IO_BUCKETS, BATCH_BUCKETS])
def test_histogram_renders_as_prometheus_client(buckets: tuple[float, ...]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "Help.", LABELS, buckets=buckets, registry=theirs)
    family = HistogramFamily("h_seconds", "Help.", LABELS, ours, buckets=buckets)
    reference.labels(*STREAM)  # a child never observed renders all zeros
    family.labels(*STREAM)
    for value in on_bounds_and_beyond(tuple(float(b) for b in buckets)):
        reference.labels(*UNARY).observe(value)
        family.labels(*UNARY).observe(value)
    assert text(ours) == text(theirs)
    assert 'le="+Inf"' in text(ours)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    registry = CollectorRegistry()
    histogram = HistogramFamily("h_seconds", "Help.", (), registry, buckets=RPC_BUCKETS).labels()
    for value in (0.0025, 0.0025, 11.0):
        histogram.observe(value)

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("h_seconds_bucket", {"le": le})

    assert (bucket("0.001"), bucket("0.0025"), bucket("10.0"), bucket("+Inf")) == (0, 2, 2, 3)
    assert registry.get_sample_value("h_seconds_count") == 3
    assert registry.get_sample_value("h_seconds_sum") == 0.0025 * 2 + 11.0


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_any_observations_render_as_prometheus_client(values: list[float]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "Help.", buckets=IO_BUCKETS, registry=theirs)
    histogram = HistogramFamily("h", "Help.", (), ours, buckets=IO_BUCKETS).labels()
    for value in values:
        reference.observe(value)
        histogram.observe(value)
    assert text(ours) == text(theirs)


def test_counters_and_gauges_render_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("c_total", "Counted.", ("reason",), registry=theirs)
    plain = Counter("p_total", "Plain.", registry=theirs)
    gauge = Gauge("g", "Gauged.", ("grpc_service", "grpc_method"), registry=theirs)
    our_counter = CounterFamily("c_total", "Counted.", ("reason",), ours)
    our_plain = CounterFamily("p_total", "Plain.", (), ours).labels()
    our_gauge = GaugeFamily("g", "Gauged.", ("grpc_service", "grpc_method"), ours)
    assert text(ours) == text(theirs)  # label-less ones render 0 from the start
    for reason, amount in (("invalid", 1.0), ("rate_limited", 2.5), ("invalid", 1.0)):
        counter.labels(reason).inc(amount)
        our_counter.labels(reason).inc(amount)
    plain.inc()
    our_plain.inc()
    gauge.labels(*STREAM[:2]).inc()
    gauge.labels(*STREAM[:2]).inc()
    gauge.labels(*STREAM[:2]).dec()
    gauge.labels(*UNARY[:2]).inc()
    gauge.labels(*UNARY[:2]).dec()
    our_gauge.labels(*STREAM[:2]).inc()
    our_gauge.labels(*STREAM[:2]).inc()
    our_gauge.labels(*STREAM[:2]).dec()
    our_gauge.labels(*UNARY[:2]).inc()
    our_gauge.labels(*UNARY[:2]).dec()
    assert text(ours) == text(theirs)


def test_labels_returns_the_same_child_and_checks_the_count() -> None:
    family = CounterFamily("c_total", "Counted.", LABELS, CollectorRegistry())
    assert family.labels(*UNARY) is family.labels(*UNARY)
    with pytest.raises(ValueError, match="expected labels"):
        family.labels("only-one")


def test_a_name_registered_twice_is_refused() -> None:
    registry = CollectorRegistry()
    CounterFamily("c_total", "Counted.", (), registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("c_total", "Again.", registry=registry)


def test_method_metrics_bind_every_code_and_count_calls() -> None:
    metrics = ServiceMetrics()
    method = metrics.method("/driver.v1.DriverService/GetDriver", "unary")
    assert metrics.method("/driver.v1.DriverService/GetDriver", "unary") is method
    assert method.open_streams is None
    assert len(method.handled) == 17
    method.started.inc()
    method.handling.observe(0.0001)
    body, _ = metrics.render()
    assert b'grpc_code="Unimplemented",grpc_method="GetDriver"' in body
    assert b"_created" not in body
    labels = dict(zip(LABELS, UNARY, strict=True))
    value = metrics.registry.get_sample_value
    assert value("grpc_server_started_total", labels) == 1
    assert value("grpc_server_handling_seconds_bucket", {**labels, "le": "0.0001"}) == 1


#: What dashboards and alerts read: every family's name, type and help text, in order.
SERIES = [
    ("grpc_server_started_total", "counter", "RPCs started on the server."),
    (
        "grpc_server_handled_total",
        "counter",
        "RPCs completed on the server, regardless of success or failure.",
    ),
    (
        "grpc_server_handling_seconds",
        "histogram",
        "Time from the start of an RPC to its end (whole stream for streaming RPCs).",
    ),
    (
        "grpc_server_msg_received_total",
        "counter",
        "Request messages received by the server (1 per unary call).",
    ),
    (
        "grpc_server_msg_sent_total",
        "counter",
        "Response messages sent by the server (1 per successful unary call).",
    ),
    ("grpc_server_open_streams", "gauge", "Streaming RPCs in progress."),
    (
        "driver_service_store_seconds",
        "histogram",
        "Latency of store operations, failed ones included.",
    ),
    ("driver_service_store_errors_total", "counter", "Store operations that raised."),
    (
        "driver_service_bus_publish_seconds",
        "histogram",
        "Latency of publishing committed locations to live watchers.",
    ),
    ("driver_service_bus_publish_errors_total", "counter", "Publishes to the bus that raised."),
    (
        "driver_service_updates_rejected_total",
        "counter",
        "Location updates refused, by reason (invalid, rate_limited before storage;"
        " conflict: another fix is stored for the driver and timestamp).",
    ),
    ("driver_service_sessions_open", "gauge", "DriverSession streams open."),
    ("driver_service_watchers", "gauge", "Live location subscriptions open."),
    (
        "driver_service_stale_drivers",
        "gauge",
        "Known non-OFFLINE drivers with no event for stale_after (excluded from dispatch).",
    ),
    (
        "driver_service_commit_batch_size",
        "histogram",
        "Location updates per group commit (one store transaction).",
    ),
    (
        "driver_service_background_task_failures_total",
        "counter",
        "Supervised background tasks that ended unexpectedly, by task (restarted or fatal).",
    ),
    (
        "driver_service_webhook_deliveries_total",
        "counter",
        "Webhook POST attempts by endpoint and outcome (delivered: 2xx; http_error: any other"
        " status; no_response: timeout, refused, reset, TLS; refused_target: a URL or address"
        " the server may not call).",
    ),
    (
        "driver_service_webhook_attempt_seconds",
        "histogram",
        "Duration of one webhook POST attempt, whatever its outcome.",
    ),
    (
        "driver_service_webhook_delivery_lag_seconds",
        "histogram",
        "Event time to the receiver's 2xx, retries included.",
    ),
    (
        "driver_service_webhook_dead_lettered_total",
        "counter",
        "Events set aside as dead letters after their last attempt, by endpoint.",
    ),
    (
        "driver_service_http_requests_total",
        "counter",
        "HTTP requests of the JSON API, streams and map, by route, method and status.",
    ),
    (
        "driver_service_http_request_seconds",
        "histogram",
        "Time from an HTTP request to its response's end (whole stream for SSE).",
    ),
]


def test_every_series_keeps_its_name_type_and_help() -> None:
    body, _ = ServiceMetrics().render()
    heads = [line for line in body.decode().splitlines() if line.startswith("#")]
    expected: list[str] = []
    for name, kind, help_text in SERIES:
        expected += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    assert heads == expected


async def test_watch_process_exports_rss_and_the_loops_live_tasks() -> None:
    """The chaos tier reads these from outside the server to prove storms leak nothing."""
    metrics = ServiceMetrics()
    metrics.watch_process(asyncio.get_running_loop())
    gate = asyncio.Event()
    extra = [asyncio.create_task(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    values = {
        sample.name: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }
    assert values["driver_service_event_loop_tasks"] == len(asyncio.all_tasks())
    assert values["driver_service_event_loop_tasks"] >= len(extra) + 1
    assert values["process_resident_memory_bytes"] > 1 << 20
    gate.set()
    await asyncio.gather(*extra)


def test_history_series_read_the_retention_figures_at_scrape_time() -> None:
    """Retention's progress while a backlog drains: the counter of expired fixes renders as
    prometheus_client's Counter does, and the size gauges follow the latest figures."""
    from driver_service.ports import HistoryStats

    stats = [HistoryStats(10, 4096, None)]
    expired = [0.0]
    metrics = ServiceMetrics()
    metrics.watch_history(lambda: stats[0], lambda: expired[0])
    stats[0] = HistoryStats(7, 4096, 1_700_000_000 * 10**9)
    expired[0] = 3.0
    reference = CollectorRegistry()
    Counter(
        "driver_service_history_expired_fixes",
        "Fixes removed by history retention since start (PostgreSQL: dropped partitions"
        " count by the planner's estimate).",
        registry=reference,
    ).inc(3)
    ours = text(metrics.registry)
    assert text(reference) in ours
    assert "driver_service_history_rows 7.0" in ours
    assert "driver_service_history_oldest_fix_seconds 1.7e+09" in ours
