"""Prometheus metrics, served at ``/metrics`` (prometheus-client's text format).

One :class:`Metrics` per daemon, with a registry of its own (never the
process-global one), injected wherever something is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Seconds: from a 16 KiB archive on loopback to a large one over a WAN.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric archiverd exports; names start with ``archiverd_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "archiverd_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "code"],
            registry=r,
        )
        self.archive_requests = Counter(
            "archiverd_archive_requests",
            "Archive requests: hit (302 to storage) or miss (202, fetched).",
            ["result"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "archiverd_upstream_bytes", "Bytes read from upstream.", registry=r
        )
        self.uploaded_bytes = Counter(
            "archiverd_uploaded_bytes",
            "Bytes stored, by region.",
            ["region"],
            registry=r,
        )
        self.storage_errors = Counter(
            "archiverd_storage_errors",
            "Failed storage calls, by region.",
            ["region"],
            registry=r,
        )
        self.task_duration = Histogram(
            "archiverd_task_duration_seconds",
            "Seconds from a task's start to its end, by final state.",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = Histogram(
            "archiverd_upstream_ttfb_seconds",
            "Seconds until upstream's response headers.",
            buckets=TTFB_BUCKETS,
            registry=r,
        )

        self.held = Counter(
            "archiverd_held_requests",
            "Requests held for their task (tasks.hold, Prefer: wait), by how "
            "they ended: stored (302), waiting (202 at the end of the wait), "
            "failed (the task failed), gone (the client left).",
            ["outcome"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "archiverd_upstream_retries",
            "Upstream requests retried, by source and cause: dns, refused, "
            "timeout, reset, tls, unreachable, other (connection failures) "
            "or 5xx.",
            ["source", "cause"],
            registry=r,
        )
        self.prewarmed = Counter(
            "archiverd_prewarmed_archives",
            "Archives stored by pre-warm tasks, before any client asked.",
            registry=r,
        )
        self.prewarm_hits = Counter(
            "archiverd_prewarm_hits",
            "First client requests for an archive that found it stored by "
            "pre-warm (counted by the daemon that pre-warmed it).",
            registry=r,
        )
        self.watcher_errors = Counter(
            "archiverd_watcher_errors",
            "Pre-warm: failed polls of upstream, refused webhooks and failed "
            "claims, by source.",
            ["source"],
            registry=r,
        )
        self.evictions = Counter(
            "archiverd_evictions",
            "Archives deleted by the file backend's retention, by reason: "
            "size (max_bytes), age (max_age) or expired (expire_after).",
            ["reason"],
            registry=r,
        )
        self.evicted_bytes = Counter(
            "archiverd_evicted_bytes", "Bytes freed by retention.", registry=r
        )
        self.refreshes = Counter(
            "archiverd_refreshes",
            "Popular archives whose expiry was restarted before it came, by "
            "result: ok, gone (no longer stored) or failed.",
            ["result"],
            registry=r,
        )
        self.repairs = Counter(
            "archiverd_repairs",
            "Archives found missing while cached as stored, by how: head "
            "(storage said 404), files (the files route found no file) or "
            "eviction (retention, here or at a daemon sharing the root). The "
            "next request stores them again where they lack.",
            ["cause"],
            registry=r,
        )
        self.hits = self.archive_requests.labels("hit")
        self.misses = self.archive_requests.labels("miss")
        self._by_route: dict[tuple[str, int], Any] = {}

    def count_request(self, route: str, code: int) -> None:
        """One more answer on ``route`` with status ``code``."""
        child = self._by_route.get((route, code))
        if child is None:
            child = self._by_route[route, code] = self.requests.labels(route, str(code))
        child.inc()

    def watch_tasks(self, tasks: Any) -> None:
        """Export the task table's sizes (read at each scrape)."""
        self.registry.register(_TaskCollector(tasks))

    def watch_fleet(self, fleet: Any) -> None:
        """Export whether the fleet's Redis answers (read at each scrape)."""
        self.registry.register(_FleetCollector(fleet))


class _FleetCollector(Collector):
    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "archiverd_redis_up",
            "1 while the fleet's Redis answers (pinged every second), else 0.",
            value=1 if self.fleet.up else 0,
        )
        calls = CounterMetricFamily(
            "archiverd_redis_calls",
            "Round trips to the fleet's Redis, by kind.",
            labels=["kind"],
        )
        calls.add_metric(["ping"], self.fleet.pings)
        calls.add_metric(["work"], self.fleet.calls - self.fleet.pings)
        yield calls


class _TaskCollector(Collector):
    def __init__(self, tasks: Any) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "archiverd_tasks", "Tasks in the table, by state.", labels=["state"]
        )
        for state, count in sorted(self.tasks.counts().items()):
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "archiverd_tasks_in_flight",
            "Transfers running now.",
            value=self.tasks.working,
        )
        yield GaugeMetricFamily(
            "archiverd_tasks_queued",
            "Tasks waiting for a turn (max_concurrent_tasks).",
            value=self.tasks.queued,
        )
