"""Every stage's counters as OpenTelemetry metrics, so Prometheus (or an OTLP collector) sees what the
heartbeat files show: in-kernel filter and loss counters, lag, dead letters, insert latency...

Exporter by the standard variables: OTEL_METRICS_EXPORTER = prometheus | otlp | console | none (default
none). Prometheus: an HTTP endpoint on OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT
(default 127.0.0.1:9464; give each stage on one machine its own port). Each numeric counter becomes a
gauge `fimstream_<counter>` with the label `stage`.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Callable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

log = logging.getLogger(__name__)
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


class CounterExport:
    """Registers a gauge per counter name as names appear; their callbacks read the latest values."""

    def __init__(self, stage: str, provider: MeterProvider):
        self.stage = stage
        self.provider = provider
        self.meter = provider.get_meter("fimstream")
        self.values: dict[str, float] = {}
        self._known: set[str] = set()

    def update(self, counters: dict) -> None:
        for name, value in counters.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.values[name] = value
            if name not in self._known:
                self._known.add(name)
                self.meter.create_observable_gauge(f"fimstream_{_NAME_OK.sub('_', name)}",
                                                   callbacks=[self._callback(name)])

    def _callback(self, name: str) -> Callable[[CallbackOptions], list[Observation]]:
        attrs = {"stage": self.stage}
        return lambda options: [Observation(self.values.get(name, 0), attrs)]

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup(stage: str) -> CounterExport | None:
    name = os.environ.get("OTEL_METRICS_EXPORTER", "none").split(",")[0].strip().lower()
    if name in ("", "none"):
        return None
    if name == "prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
        host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
        port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
        start_http_server(port, addr=host)
        reader = PrometheusMetricReader()
        log.info("metrics: Prometheus endpoint on http://%s:%d/metrics", host, port)
    elif name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    elif name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
    else:
        raise ValueError(f"OTEL_METRICS_EXPORTER={name!r}: expected prometheus, otlp, console or none")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"fimstream-{stage}")})
    return CounterExport(stage, MeterProvider(resource=resource, metric_readers=[reader]))
