"""OpenTelemetry for every stage: one tracer provider per process, trace context carried in Kafka headers.

A Kafka message is a batch of events; its `traceparent` header makes every stage's span for that batch
part of one trace, so an event's path collector -> enricher -> detector -> sink is one trace id (stored
with the event in ClickHouse as `trace_id`).

Exporter is chosen by the standard variables: OTEL_TRACES_EXPORTER = otlp | console | none (default
none), OTEL_EXPORTER_OTLP_* for OTLP, OTEL_SERVICE_NAME overrides the service name. One extension:
OTEL_TRACES_EXPORTER=file writes spans as JSON lines to FIMSTREAM_TRACE_FILE (what `fimstream up` uses, so
traces are readable on a machine without a collector).
"""
from __future__ import annotations

import json
import os
import threading
from typing import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor,
                                            SpanExporter, SpanExportResult)

Headers = Sequence[tuple[str, bytes]]
_provider: TracerProvider | None = None


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (safe for several processes)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_dict(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)  # one write per export: lines of concurrent processes don't interleave
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_dict(s: ReadableSpan) -> dict:
    parent = s.parent.span_id if s.parent else None
    return {
        "trace_id": format(s.context.trace_id, "032x"),
        "span_id": format(s.context.span_id, "016x"),
        "parent_span_id": format(parent, "016x") if parent else None,
        "name": s.name,
        "service": s.resource.attributes.get("service.name", ""),
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "attributes": dict(s.attributes or {}),
        "links": [format(link.context.trace_id, "032x") for link in s.links],
    }


def _exporter_from_env() -> tuple[SpanExporter | None, bool]:
    """Returns (exporter, batch?)."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip().lower()
    if name in ("", "none"):
        return None, False
    if name == "console":
        return ConsoleSpanExporter(), False
    if name == "file":
        return JsonLinesSpanExporter(os.environ.get("FIMSTREAM_TRACE_FILE", "fimstream-traces.jsonl")), True
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(), True
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: expected otlp, console, file or none")


def setup(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the process's tracer provider. `exporter` (tests: InMemorySpanExporter) overrides env."""
    global _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"fimstream-{service}"),
                                "fimstream.stage": service})
    provider = TracerProvider(resource=resource)
    batch = False
    if exporter is None:
        exporter, batch = _exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500) if batch
                                    else SimpleSpanProcessor(exporter))
    if _provider is not None:
        _provider.shutdown()
    _provider = provider
    return provider


def tracer(name: str = "fimstream") -> trace.Tracer:
    if _provider is None:
        return trace.get_tracer(name)  # no-op until setup()
    return _provider.get_tracer(name)


def shutdown() -> None:
    global _provider
    if _provider is not None:
        _provider.force_flush()
        _provider.shutdown()
        _provider = None


# --------------------------------------------------------------------------------- Kafka header carrier
def inject(headers: list[tuple[str, bytes]] | None = None, ctx: otel_context.Context | None = None
           ) -> list[tuple[str, bytes]]:
    """Add traceparent/tracestate of the current (or given) context to Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    headers = list(headers or [])
    headers.extend((k, v.encode()) for k, v in carrier.items())
    return headers


def extract(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """Context from a consumed message's headers (empty context when there is none)."""
    carrier = {}
    if isinstance(headers, dict):
        headers = headers.items()
    for k, v in headers or ():
        if k in ("traceparent", "tracestate"):
            carrier[k] = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)
    return propagate.extract(carrier)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def trace_id_of(headers: Iterable[tuple[str, bytes]] | None) -> str:
    ctx = trace.get_current_span(extract(headers)).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
