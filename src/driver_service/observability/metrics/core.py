"""Lock-free instruments for the event-loop thread, and the collectors that render them
exactly as prometheus_client renders its own."""

from __future__ import annotations

import math
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
    finds the first bound >= value), anything above the last bound in +Inf. The call
    pipeline does what `observe` does inline (a frame less per call): keep them alike."""

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


class CounterReading(Collector):
    """A counter without labels whose value is read from `read` at scrape time (what
    prometheus_client's `Gauge.set_function` is for gauges): the owner keeps the count as
    a plain attribute and no instrument is updated on its path."""

    def __init__(
        self,
        name: str,
        documentation: str,
        read: Callable[[], float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._read = read
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, value=self._read())]
