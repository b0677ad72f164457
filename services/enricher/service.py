"""The enricher stage: a Faust app, raw topic -> enriched topic.

Faust costs ~440 µs per Kafka message whatever its size (DESIGN.md), so the agent takes messages in
groups (`take_events`) and each message is a batch of events. Delivery of the outputs is awaited before
the agent moves on, and Faust acks (commits) an input only after that: at-least-once.

A container can act before its pod is visible in the API. Its batch is held (bounded time and count,
in order per key: later batches of that key queue behind it) until the metadata arrives or the hold
expires; then it is emitted, marked `unresolved` if still unknown. Holding keeps a reference on the
Faust message, so its offset is not committed until it has been emitted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import faust

from fimstream import kafka, telemetry
from fimstream.config import Settings
from fimstream.enricher.enrich import BatchEnricher, Pending
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


@dataclass
class HoldStats:
    held: int = 0  # batches ever held
    resolved: int = 0  # released because the metadata arrived
    expired: int = 0  # released unresolved after the hold time
    overflow: int = 0  # not held because the hold was full (emitted unresolved at once)


class HeldBatches:
    """Per-key FIFO of Faust events waiting for pod metadata."""

    def __init__(self, hold_s: float, max_batches: int):
        self.hold_s = hold_s
        self.max_batches = max_batches
        self.queues: dict[bytes | None, deque] = {}
        self.count = 0
        self.stats = HoldStats()

    def blocked(self, key) -> bool:
        return key in self.queues

    def room(self) -> bool:
        return self.count < self.max_batches

    def add(self, event) -> None:
        event.message.incref()  # take_events acks it; our reference keeps its offset uncommitted
        self.queues.setdefault(event.message.key, deque()).append((event, time.monotonic() + self.hold_s))
        self.count += 1
        self.stats.held += 1


async def run(settings: Settings, stop: asyncio.Event, health: Health, **options) -> None:
    (settings.state_dir / "enricher").mkdir(parents=True, exist_ok=True)
    await kafka.ensure_topics(settings)
    codecs, schemas = kafka.codecs_with_schema_topic(settings)
    app = make_app(settings)
    resolver = MetadataResolver(settings)
    resolver.attach(app)
    enricher = BatchEnricher(codecs, resolver.resolve, lambda: resolver.generation)
    held = HeldBatches(float(os.environ.get("FIMSTREAM_ENRICH_HOLD_MS", "2000")) / 1000,
                       int(os.environ.get("FIMSTREAM_ENRICH_HOLD_MAX", "2000")))

    producer = kafka.make_producer(settings)
    await producer.start()
    sender = kafka.Sender(producer)
    await schemas.publish(sender, [codecs.enriched])
    dead = kafka.DeadLetters(sender, settings.topics.deadletter, "enricher")
    health.add_source(lambda: {"batches": enricher.stats.batches, "events": enricher.stats.events,
                               "reencoded": enricher.stats.reencoded, "dead_letters": dead.count,
                               **{f"status_{k}": v for k, v in enricher.stats.by_status.items()},
                               "held_now": held.count, **{f"hold_{k}": v for k, v in vars(held.stats).items()},
                               "backpressure_ms": sender.stats.backpressure_ns // 1_000_000,
                               "send_retries": sender.stats.retries, **resolver.stats()})

    raw_topic = app.topic(settings.topics.raw, value_serializer="raw", key_serializer="raw")

    async def emit(message, final: bool) -> bool:
        """Enrich and send one raw batch; False when it must wait for metadata (only if not final)."""
        with kafka.process_span("enricher", message) as span:
            try:
                try:
                    enriched, n = enricher.enrich(message.value, final)
                except CodecError as e:
                    if "unknown writer schema" not in str(e):
                        raise
                    await schemas.refresh()
                    enriched, n = enricher.enrich(message.value, final)
            except Pending:
                return False
            except CodecError as e:
                await dead.send(message, str(e))
                return True
            span.set_attribute("fimstream.events", n)
            await sender.send(settings.topics.enriched, enriched, key=message.key, headers=telemetry.inject())
            return True

    async def release(stream) -> None:
        """Emit held batches whose metadata arrived or whose hold expired, in order per key."""
        done = []
        now = time.monotonic()
        for key, queue in list(held.queues.items()):
            while queue:
                event, deadline = queue[0]
                expired = now >= deadline
                if not await emit(event.message, final=expired):
                    break
                queue.popleft()
                held.count -= 1
                done.append(event)
                if expired:
                    held.stats.expired += 1
                else:
                    held.stats.resolved += 1
            if not queue:
                del held.queues[key]
        if done:
            await sender.drain()
            for event in done:
                await stream.ack(event)  # drops our reference: the offset may now be committed

    @app.agent(raw_topic, name="enrich")
    async def enrich_agent(stream):
        release_task = asyncio.create_task(_release_loop(stream))
        try:
            async for events in stream.take_events(TAKE_MAX, within=TAKE_WITHIN):
                for event in events:
                    message = event.message
                    if held.blocked(message.key):  # keep order: queue behind the held batch
                        held.add(event)
                    elif not await emit(message, final=False):
                        if held.room():
                            held.add(event)
                        else:  # bounded memory: emit it now, marked unresolved
                            held.stats.overflow += 1
                            await emit(message, final=True)
                await sender.drain()  # outputs acknowledged before Faust acks (commits) the inputs
        finally:
            release_task.cancel()

    async def _release_loop(stream) -> None:
        while True:
            await asyncio.sleep(0.1)
            if held.count:
                await release(stream)

    await app.start()
    await resolver.start()  # after the app: leadership is known only once the consumer has joined
    health.status = "running"
    health.info["metadata_mode"] = resolver.mode
    log.info("enricher running: %s -> %s (metadata: %s)", settings.topics.raw, settings.topics.enriched, resolver.mode)
    try:
        await stop.wait()
    finally:
        health.status = "stopping"
        await app.stop()
        await sender.drain()
        await producer.stop()
        await resolver.stop()
