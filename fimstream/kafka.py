"""Kafka plumbing shared by every stage: clients, topics, reliable sends, dead letters, schema topic,
and the consume -> handle -> commit loop (at-least-once: offsets are committed only after the outputs
of a poll are acknowledged by the broker).

Settings that matter on the embedded broker (Tansu, see DESIGN.md): no idempotent producer (its
InitProducerId v0 fails), a ~10 s session timeout (group joins take half of it).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from fimstream import telemetry
from fimstream.config import Settings
from fimstream.schemas.codec import Codec, CodecError, Codecs, SchemaRegistry, canonical_json

log = logging.getLogger(__name__)

H_ERROR = "fimstream.error"
H_SOURCE = "fimstream.source"
H_STAGE = "fimstream.stage"


def client_options(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.kafka_bootstrap, **settings.kafka_security}


def make_producer(settings: Settings, **overrides) -> AIOKafkaProducer:
    opts = dict(
        compression_type=settings.compression or None,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.producer_max_batch_bytes,
        max_request_size=max(settings.producer_max_batch_bytes, 1 << 20) * 4,
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=15000,
        retry_backoff_ms=200,
    )
    opts.update(overrides)
    return AIOKafkaProducer(**client_options(settings), **opts)


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides) -> AIOKafkaConsumer:
    opts = dict(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=2000,
        max_poll_interval_ms=300000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        max_poll_records=500,
    )
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **client_options(settings), **opts)


async def wait_for_broker(settings: Settings, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as e:  # connection refused, metadata timeout...
            if time.monotonic() > deadline:
                raise ConnectionError(f"Kafka at {settings.kafka_bootstrap} not reachable after {timeout:.0f}s: {e}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        finally:
            await admin.close()


async def ensure_topics(settings: Settings, topics: Iterable[str] | None = None) -> None:
    """Create missing topics (settings.partitions each; the schema/control topics get one partition)."""
    await wait_for_broker(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        single = {settings.topics.schemas, settings.topics.control}
        wanted = [t for t in (topics or settings.topics.all()) if t not in existing]
        new = [NewTopic(t, 1 if t in single else settings.partitions, settings.replication,
                        topic_configs={"cleanup.policy": "compact"} if t == settings.topics.schemas else {})
               for t in wanted]
        for topic in new:
            try:
                await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass  # another stage created it first
    finally:
        await admin.close()


# ------------------------------------------------------------------------------------------- sending
@dataclass
class SendStats:
    messages: int = 0
    bytes: int = 0
    retries: int = 0
    backpressure_ns: int = 0  # time callers waited because too much was in flight


class Sender:
    """Sends that survive a broker outage: each message is retried with back-off until acknowledged.
    At most `max_pending_bytes` may be in flight; beyond that `send` waits (back-pressure), and the wait
    is counted so it can be reported."""

    def __init__(self, producer: AIOKafkaProducer, max_pending_bytes: int = 64 << 20):
        self.producer = producer
        self.max_pending_bytes = max_pending_bytes
        self.stats = SendStats()
        self._pending: set[asyncio.Task] = set()
        self._pending_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._topic_checks: dict[str, asyncio.Future] = {}

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: Sequence[tuple[str, bytes]] | None = None, partition: int | None = None) -> asyncio.Task:
        """Queue one message; returns a task that completes when the broker has it."""
        if self._pending_bytes >= self.max_pending_bytes:
            t0 = time.monotonic_ns()
            while self._pending_bytes >= self.max_pending_bytes:
                self._room.clear()
                await self._room.wait()
            self.stats.backpressure_ns += time.monotonic_ns() - t0
        size = len(value) + (len(key) if key else 0)
        self._pending_bytes += size
        task = asyncio.create_task(self._deliver(topic, value, key, list(headers or ()), partition, size))
        self._pending.add(task)
        return task

    async def _deliver(self, topic, value, key, headers, partition, size) -> None:
        delay = 0.1
        try:
            while True:
                try:
                    fut = await self.producer.send(topic, value=value, key=key, headers=headers, partition=partition)
                    await fut
                    self.stats.messages += 1
                    self.stats.bytes += size
                    return
                except KafkaError as e:
                    self.stats.retries += 1
                    log.warning("send to %s failed (%s); retrying in %.1fs", topic, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    # The failure may have been an outage, and the broker that is back may have lost the
                    # topic (Tansu with memory storage). The producer's cached metadata still names the old
                    # leader, and Tansu acknowledges a produce to a topic it does not have (error 0, records
                    # unreadable, even once the topic is created again): re-send only once fresh metadata
                    # shows the topic (and partition).
                    waited = False
                    while not await self._topic_ready(topic, partition):
                        (log.debug if waited else log.warning)(
                            "topic %s%s is not in the broker's metadata; waiting before re-sending",
                            topic, "" if partition is None else f"/{partition}")
                        waited = True
                        await asyncio.sleep(min(delay, 1.0))
                        delay = min(delay * 2, 5.0)
        finally:
            self._pending_bytes -= size
            self._pending.discard(asyncio.current_task())
            self._room.set()

    async def _topic_ready(self, topic: str, partition: int | None) -> bool:
        """The broker has the topic (and the partition, if one is given) now, and the producer's metadata
        is refreshed from it. One look-up per topic at a time, shared by all the messages waiting for it."""
        check = self._topic_checks.get(topic)
        if check is None or check.done():
            check = self._topic_checks[topic] = asyncio.ensure_future(self._fresh_partitions(topic))
        partitions = await asyncio.shield(check)
        return bool(partitions) and (partition is None or partition in partitions)

    async def _fresh_partitions(self, topic: str) -> set[int] | None:
        """The topic's partitions as the broker has them now (None: no topic, or no broker). Asks without
        auto-creation: Tansu would create the topic with its default partition count (4), and ensure_topics
        would then leave it so (TOPIC_ALREADY_EXISTS)."""
        client = self.producer.client
        node = client.get_random_node()
        if node is None:
            return None
        try:
            response = await asyncio.wait_for(
                client.send(node, MetadataRequest([topic], allow_auto_topic_creation=False)), 30)
        except (KafkaError, asyncio.TimeoutError, OSError):
            return None  # broker still unreachable
        fresh = ClusterMetadata()
        fresh.update_metadata(response)
        partitions = fresh.partitions_for_topic(topic)
        if partitions:
            try:  # the producer routes by its own metadata: replace the copy from before the outage
                await asyncio.wait_for(client.force_metadata_update(), 30)
            except asyncio.TimeoutError:  # the refresh never ends once the producer is stopped
                return None
        return partitions

    async def drain(self) -> None:
        """Wait until everything sent so far is acknowledged."""
        while self._pending:
            await asyncio.gather(*list(self._pending))


class DeadLetters:
    """Messages a stage cannot process go here with the reason and where they came from; the stream goes on."""

    def __init__(self, sender: Sender, topic: str, stage: str):
        self.sender = sender
        self.topic = topic
        self.stage = stage
        self.count = 0

    async def send(self, msg: ConsumerRecord, reason: str) -> None:
        self.count += 1
        log.warning("dead letter from %s/%d@%d: %s", msg.topic, msg.partition, msg.offset, reason)
        headers = [h for h in (msg.headers or ()) if not h[0].startswith("fimstream.")]
        headers += [(H_ERROR, reason.encode("utf-8", "replace")[:4000]),
                    (H_SOURCE, f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
                    (H_STAGE, self.stage.encode())]
        await self.sender.send(self.topic, msg.value or b"", key=msg.key, headers=headers)


# -------------------------------------------------------------------------------------- schema topic
class SchemaTopic:
    """The schema topic makes schema evolution work across versions: every writer publishes its schemas
    (key = fingerprint), and a reader that meets an unknown fingerprint re-reads the topic once."""

    def __init__(self, settings: Settings, registry: SchemaRegistry):
        self.settings = settings
        self.registry = registry

    async def publish(self, sender: Sender, codecs: Iterable[Codec]) -> None:
        for codec in codecs:
            # one acknowledged send per schema: each lands in its own record batch (Tansu end-offset quirk)
            task = await sender.send(self.settings.topics.schemas, canonical_json(codec.schema).encode(),
                                     key=codec.fingerprint.hex().encode())
            await task

    async def refresh(self, timeout: float = 10.0) -> int:
        """Read the whole schema topic into the registry; returns how many schemas were added."""
        consumer = make_consumer(self.settings, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        added = 0
        try:
            tp = TopicPartition(self.settings.topics.schemas, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            deadline = time.monotonic() + timeout
            while await consumer.position(tp) < end and time.monotonic() < deadline:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    for r in records:
                        before = len(list(self.registry.known()))
                        try:
                            self.registry.add_json(r.value.decode())
                        except Exception as e:  # a bad record in the schema topic must not stop readers
                            log.warning("schema topic record %d unreadable: %s", r.offset, e)
                        added += len(list(self.registry.known())) - before
        finally:
            await consumer.stop()
        return added


async def decode_or_refresh(codec: Codec, payload: bytes, schemas: SchemaTopic | None) -> list[dict]:
    """Decode a batch; on an unknown writer fingerprint read the schema topic once and retry."""
    try:
        return codec.decode_batch(payload)
    except CodecError as e:
        if schemas is None or "unknown writer schema" not in str(e):
            raise
        await schemas.refresh()
        return codec.decode_batch(payload)


# ---------------------------------------------------------------------------------- control topic
async def follow_control(settings: Settings, stop: asyncio.Event,
                         apply: Callable[[bytes | None, bytes], Awaitable[None]]) -> None:
    """Apply every control message (key, value) in order, from the beginning of the topic, then follow
    it. Every worker of every stage reads all of it (no consumer group): a restarted stage re-applies
    what operators pushed (e.g. a rules overlay), and the last message of a kind wins."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topics.control, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while not stop.is_set():
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for r in records:
                    await apply(r.key, r.value or b"")
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------------------- consume loop
Handler = Callable[[list[ConsumerRecord]], Awaitable[None]]


@dataclass
class LoopStats:
    polls: int = 0
    messages: int = 0
    commits: int = 0
    last_message_time: float = 0.0
    lag: dict = field(default_factory=dict)


class ConsumeLoop:
    """poll -> handler(messages) -> wait for the handler's sends -> commit. A crash between handler and
    commit replays the poll (at-least-once); downstream deduplicates by event id."""

    def __init__(self, consumer: AIOKafkaConsumer, handler: Handler, sender: Sender | None,
                 max_records: int = 500, poll_ms: int = 200):
        self.consumer = consumer
        self.handler = handler
        self.sender = sender
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.stats = LoopStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
            self.stats.polls += 1
            messages = [m for part in batches.values() for m in part]
            if not messages:
                continue
            await self.handler(messages)
            if self.sender is not None:
                await self.sender.drain()
            await self.consumer.commit()
            self.stats.commits += 1
            self.stats.messages += len(messages)
            self.stats.last_message_time = time.time()
            for tp in batches:
                hw = self.consumer.highwater(tp)
                pos = await self.consumer.position(tp)
                if hw is not None:
                    self.stats.lag[f"{tp.topic}/{tp.partition}"] = max(0, hw - pos)


def process_span(stage: str, msg: ConsumerRecord, name: str | None = None, **attributes):
    """A span for one consumed batch message, child of the upstream stage's span (from its headers)."""
    return telemetry.tracer(f"fimstream.{stage}").start_as_current_span(
        name or f"{stage}.process", context=telemetry.extract(msg.headers),
        attributes={"messaging.system": "kafka", "messaging.source.name": msg.topic,
                    "messaging.kafka.partition": msg.partition, "messaging.kafka.offset": msg.offset,
                    **attributes})


def codecs_with_schema_topic(settings: Settings) -> tuple[Codecs, SchemaTopic]:
    codecs = Codecs()
    return codecs, SchemaTopic(settings, codecs.registry)
