"""The enricher stage: a Faust app, raw topic -> enriched topic.

Faust costs ~440 µs per Kafka message whatever its size (DESIGN.md), so the agent takes messages in
groups (`take_events`) and each message is a batch of events. Delivery of the outputs is awaited before
the agent moves on, and Faust acks (commits) an input only after that: at-least-once.
"""
from __future__ import annotations

import asyncio
import logging

import faust

from fimstream import kafka, telemetry
from fimstream.config import Settings
from fimstream.enricher.enrich import BatchEnricher
from fimstream.enricher.metadata import MetadataResolver
from fimstream.health import Health
from fimstream.schemas.codec import CodecError

log = logging.getLogger("fimstream.enricher")
TAKE_MAX = 64
TAKE_WITHIN = 0.05


def make_app(settings: Settings) -> faust.App:
    hosts = ";".join(settings.kafka_bootstrap.split(","))
    return faust.App(
        settings.group("enricher"),
        broker=f"kafka://{hosts}",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        broker_session_timeout=10,  # Tansu: a group join takes half the session timeout
        broker_heartbeat_interval=2,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(settings.state_dir / "enricher"),
        store="memory://",
    )


async def run(settings: Settings, stop: asyncio.Event, health: Health, **options) -> None:
    (settings.state_dir / "enricher").mkdir(parents=True, exist_ok=True)
    await kafka.ensure_topics(settings)
    codecs, schemas = kafka.codecs_with_schema_topic(settings)
    resolver = MetadataResolver(settings)
    enricher = BatchEnricher(codecs, resolver.resolve)
    resolver.on_change(enricher.invalidate)

    producer = kafka.make_producer(settings)
    await producer.start()
    sender = kafka.Sender(producer)
    await schemas.publish(sender, [codecs.enriched])
    dead = kafka.DeadLetters(sender, settings.topics.deadletter, "enricher")
    health.add_source(lambda: {"batches": enricher.stats.batches, "events": enricher.stats.events,
                               "reencoded": enricher.stats.reencoded, "dead_letters": dead.count,
                               **{f"status_{k}": v for k, v in enricher.stats.by_status.items()},
                               "backpressure_ms": sender.stats.backpressure_ns // 1_000_000,
                               "send_retries": sender.stats.retries})

    app = make_app(settings)
    raw_topic = app.topic(settings.topics.raw, value_serializer="raw", key_serializer="raw")

    async def handle(message) -> None:
        with kafka.process_span("enricher", message) as span:
            payload = message.value
            try:
                enriched, n = enricher.enrich(payload)
            except CodecError as e:
                if "unknown writer schema" in str(e):
                    await schemas.refresh()
                    try:
                        enriched, n = enricher.enrich(payload)
                    except CodecError as e2:
                        await dead.send(message, str(e2))
                        return
                else:
                    await dead.send(message, str(e))
                    return
            span.set_attribute("fimstream.events", n)
            await sender.send(settings.topics.enriched, enriched, key=message.key,
                              headers=telemetry.inject())

    @app.agent(raw_topic, name="enrich")
    async def enrich_agent(stream):
        async for events in stream.take_events(TAKE_MAX, within=TAKE_WITHIN):
            for event in events:
                await handle(event.message)
            await sender.drain()  # outputs acknowledged before Faust acks (commits) the inputs

    await resolver.start()
    await app.start()
    health.status = "running"
    log.info("enricher running: %s -> %s (%s)", settings.topics.raw, settings.topics.enriched, resolver.mode)
    health.info["metadata_mode"] = resolver.mode
    try:
        await stop.wait()
    finally:
        health.status = "stopping"
        await app.stop()
        await sender.drain()
        await producer.stop()
        await resolver.stop()
