"""Batches encoded RawEvents by partition key and publishes them with fimstream.kafka.Sender.

Key = the container id of the process (fimstream.containers via the process cache), else the host: all
events of one container / the host's process tree land in one partition, in order. A batch goes out at
settings.batch_events events or after settings.linger_ms, as one Kafka message (codec framing: an Avro
array), under one `collector.publish` span whose context travels in the message headers.

The kernel side is never blocked: the ring buffer is drained into a bounded buffer whatever Kafka does.
While Kafka is down or slow (Sender back-pressure), batches queue here; beyond `max_buffered_events`
new events are dropped and counted (`dropped`), and the collector reports them as a loss event.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from fimstream import kafka, telemetry
from fimstream.collector.event import TYPE_INDEX
from fimstream.config import Settings
from fimstream.schemas.codec import Codecs

log = logging.getLogger(__name__)
_ENFORCEMENT = TYPE_INDEX["enforcement"]


class Publisher:
    def __init__(self, settings: Settings, codecs: Codecs, max_buffered_events: int = 1_000_000,
                 max_pending_bytes: int = 64 << 20):
        self.settings = settings
        self.codecs = codecs
        self.codec = codecs.raw
        self.topic = settings.topics.raw
        self.batch_events = max(1, settings.batch_events)
        self.linger = max(0.001, settings.linger_ms / 1000)
        self.max_buffered = max_buffered_events
        self.max_pending_bytes = max_pending_bytes
        self._open: dict[bytes, list[bytes]] = {}
        self._opened_at: dict[bytes, float] = {}
        self._ready: deque[tuple[bytes, list[bytes]]] = deque()
        self._wake = asyncio.Event()
        self.buffered = 0  # events accepted and not handed to the Kafka client yet
        self.in_flight = 0  # events handed over, not acknowledged yet
        self.dropped = 0
        self.published = 0
        self.batches = 0
        self.connected = False
        self.sender: kafka.Sender | None = None
        self._producer = None
        self._tracer = telemetry.tracer("fimstream.collector")

    # --------------------------------------------------------------------------- producer side
    @property
    def full(self) -> bool:
        return self.buffered >= self.max_buffered

    def add(self, key: bytes, body: bytes, force: bool = False) -> bool:
        """Queue one encoded event; False (and counted) when the buffer is full."""
        if self.buffered >= self.max_buffered and not force:
            self.dropped += 1
            return False
        batch = self._open.get(key)
        if batch is None:
            if not self._opened_at:
                self._wake.set()  # run() sleeps without a deadline while no batch is open
            batch = self._open[key] = []
            self._opened_at[key] = time.monotonic()
        batch.append(body)
        self.buffered += 1
        if len(batch) >= self.batch_events:
            self._close(key)
            self._wake.set()
        return True

    def _close(self, key: bytes) -> None:
        self._ready.append((key, self._open.pop(key)))
        del self._opened_at[key]

    def flush_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in [k for k, t in self._opened_at.items() if now - t >= self.linger]:
            self._close(key)

    def flush_all(self) -> None:
        for key in list(self._open):
            self._close(key)

    # ------------------------------------------------------------------------------ Kafka side
    async def connect(self, stop: asyncio.Event) -> bool:
        """Wait for the broker (retrying while the ring buffer keeps being drained), create topics,
        start the producer, publish our writer schemas. False if stopped first."""
        delay = 0.5
        while not stop.is_set():
            try:
                await kafka.ensure_topics(self.settings)
                producer = kafka.make_producer(self.settings)
                await producer.start()
                self._producer = producer
                self.sender = kafka.Sender(producer, max_pending_bytes=self.max_pending_bytes)
                await kafka.SchemaTopic(self.settings, self.codecs.registry).publish(
                    self.sender, [self.codecs.raw, self.codecs.stats])
                self.connected = True
                log.info("publishing to %s on %s", self.topic, self.settings.kafka_bootstrap)
                return True
            except Exception as e:  # broker down at start: keep buffering, try again
                log.warning("Kafka not ready (%s); buffering events, retrying in %.0fs", e, delay)
                if self._producer is not None:
                    await self._producer.stop()
                    self._producer = None
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.connect(stop):
            return
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self.flush_due()
            await self._send_ready()
            self._wake.clear()
            # asleep until a batch is full, the oldest open one is due, or a first one opens (add());
            # no timer at all while nothing is buffered: an idle host costs no wake-ups
            oldest = next(iter(self._opened_at.values()), None)
            timer = None if oldest is None else \
                loop.call_later(max(0.0, oldest + self.linger - time.monotonic()), self._wake.set)
            await self._wake.wait()
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        """Make run() look at its stop event now (it does not wait on it)."""
        self._wake.set()

    async def _send_ready(self) -> None:
        while self._ready:
            key, bodies = self._ready.popleft()
            await self.send_batch(key, bodies)

    async def send_batch(self, key: bytes, bodies: list[bytes]) -> None:
        n = len(bodies)
        value = self.codec.frame_encoded(bodies)
        with self._tracer.start_as_current_span(
                "collector.publish",
                attributes={"messaging.system": "kafka", "messaging.destination.name": self.topic,
                            "messaging.kafka.message.key": key.decode("utf-8", "replace"),
                            "messaging.batch.message_count": n, "events": n, "bytes": len(value)}):
            headers = telemetry.inject()
            task = await self.sender.send(self.topic, value, key=key, headers=headers)  # waits under back-pressure
        self.buffered -= n
        self.in_flight += n
        self.batches += 1
        task.add_done_callback(lambda t, n=n: self._acked(t, n))

    def _acked(self, task: asyncio.Task, n: int) -> None:
        self.in_flight -= n
        if not task.cancelled() and task.exception() is None:
            self.published += n

    async def send_other(self, topic: str, value: bytes, key: bytes) -> None:
        """A message outside the event batches (stats); skipped while Kafka is not connected."""
        if self.sender is not None and self.connected:
            await self.sender.send(topic, value, key=key)

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is buffered and wait (bounded) for the broker to acknowledge it."""
        if self.sender is not None:
            self.flush_all()
            try:
                await asyncio.wait_for(self._send_ready(), timeout)
                await asyncio.wait_for(self.sender.drain(), timeout)
            except asyncio.TimeoutError:
                log.warning("stopping with %d events not acknowledged by Kafka", self.buffered + self.in_flight)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class EventSink:
    """Collector.on_event for publishing: process block + encode + batch by container (or host).
    Encoding is skipped for events that would be dropped anyway (the buffer is full)."""

    def __init__(self, encoder, publisher: Publisher, host: str):
        self.encoder = encoder
        self.publisher = publisher
        self.host_key = host.encode()

    def __call__(self, ev) -> None:
        publisher = self.publisher
        force = ev.type == _ENFORCEMENT  # what enforcement did is never dropped for a full buffer
        if publisher.buffered >= publisher.max_buffered and not force:
            publisher.dropped += 1
            return
        info, block = self.encoder.process_for(ev)
        body = self.encoder.encode(ev, block)
        publisher.add(info.container_id.encode() if info.container_id else self.host_key, body, force=force)
