"""The sink stage: enriched events and alerts from Kafka -> ClickHouse tables `events` and `alerts`.

- Consumer group `fimstream-sink` on the enriched-events and alerts topics. Each message (a batch of
  records, schemas/codec.py) is decoded in its own span (kafka.process_span), and its trace id is stored in
  every row it yields (`trace_id`). A message that cannot be decoded goes to the dead-letter topic with the
  reason; the stream goes on.
- Rows accumulate until `batch_rows` or `batch_age` seconds, then go to the store as one Arrow insert per
  table, in a worker thread while the next batch is decoded (at most one insert in flight).
- Offsets are committed only after the insert that holds their rows succeeded (and the batch's dead letters
  were acknowledged): at-least-once. Replays are harmless: the tables collapse copies by event id
  (ReplacingMergeTree, docs/store.md).
- Store down: the batch is kept and retried with exponential back-off (counted), the consumer is paused
  (back-pressure: nothing more is read while a batch waits) but keeps polling so it stays in its group.
  Nothing is dropped; on shutdown an uninserted batch is simply not committed and is read again later.
- Embedded store: this process owns the chDB data path, so it also serves ClickHouse's HTTP interface on
  `settings.query_listen` (services/sink/endpoint.py) for `fimstream query` and any ClickHouse client.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry import trace

from fimstream import kafka, store, telemetry
from fimstream.config import Settings
from fimstream.health import Health
from fimstream.schemas.codec import CodecError

log = logging.getLogger("fimstream.sink")


@dataclass
class Item:
    """One decoded message waiting for its insert."""

    msg: ConsumerRecord
    table: store.Table
    records: list[dict]
    trace_id: str
    span: trace.SpanContext | None


@dataclass
class Batch:
    items: list[Item] = field(default_factory=list)
    dead: list[tuple[ConsumerRecord, str]] = field(default_factory=list)  # (message, reason)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to commit
    rows: int = 0
    started: float = 0.0

    def note(self, msg: ConsumerRecord) -> None:
        if not self.offsets and not self.items:
            self.started = time.monotonic()
        self.offsets[TopicPartition(msg.topic, msg.partition)] = msg.offset + 1

    def __bool__(self) -> bool:
        return bool(self.offsets)


@dataclass
class SinkStats:
    messages: int = 0
    rows_events: int = 0
    rows_alerts: int = 0
    rows_stats: int = 0
    batches: int = 0
    insert_ms_last: float = 0.0
    insert_ms_max: float = 0.0
    insert_ms_total: float = 0.0
    insert_retries: int = 0
    insert_failures_now: int = 0  # consecutive failures of the batch in flight (0 = store healthy)
    rows_dropped: int = 0  # nothing is ever dropped; kept so dashboards can alert on it
    rows_left_for_replay: int = 0  # uncommitted at shutdown: read again at the next start
    commit_failures: int = 0
    pending_rows: int = 0
    backpressure_ms: float = 0.0


class StoreWriter:
    """The store connection, (re)opened lazily so a store that is down at start is retried like an insert."""

    def __init__(self, settings: Settings, ttl_days: int):
        self.settings = settings
        self.ttl_days = ttl_days
        self.client = None

    def insert(self, tables: list[tuple[store.Table, pa.Table]]) -> None:
        """Blocking (run in a thread). Raises on any store error; the caller retries the same tables."""
        if self.client is None:
            client = store.open_client(self.settings)
            try:
                store.ensure_schema(client, self.ttl_days)
            except Exception:
                client.close()
                raise
            self.client = client
        try:
            for table, data in tables:
                store.insert_arrow(self.client, table, data)
        except Exception:
            if not store.is_embedded(self.settings.store_url):
                self.close()  # reconnect next time (server restarted, address changed...)
            raise

    def close(self) -> None:
        if self.client is not None:
            try:
                with store.engine_lock(self.client):
                    self.client.close()
            except Exception:
                pass
            self.client = None


def build_tables(batch: Batch) -> tuple[list[tuple[store.Table, pa.Table]], list[tuple[Item, str]]]:
    """Arrow tables of a batch, one per store table. A message whose records cannot be converted (a bug,
    not bad input: decoding already validated them) is returned apart so it can be dead-lettered."""
    out, bad = [], []
    for table in store.TABLES:
        items = [i for i in batch.items if i.table is table]
        if not items:
            continue
        try:
            data = _arrow(table, items)
        except (pa.ArrowException, TypeError, KeyError, ValueError, OverflowError):
            good = []
            for item in items:  # find the culprits, keep the rest
                try:
                    _arrow(table, [item])
                    good.append(item)
                except (pa.ArrowException, TypeError, KeyError, ValueError, OverflowError) as e:
                    bad.append((item, f"sink cannot convert {table.name} rows: {type(e).__name__}: {e}"))
            if not good:
                continue
            data = _arrow(table, good)
        out.append((table, data))
    return out, bad


def _arrow(table: store.Table, items: list[Item]) -> pa.Table:
    records = [r for i in items for r in i.records]
    trace_ids = [i.trace_id for i in items for _ in i.records]
    return table.arrow(records, trace_ids)


class Sink:
    def __init__(self, settings: Settings, health: Health, batch_rows: int = 50000, batch_age: float = 0.5,
                 ttl_days: int = 0, max_retry_delay: float = 10.0, poll_records: int = 200):
        self.settings = settings
        self.health = health
        self.batch_rows = batch_rows
        self.batch_age = batch_age
        self.max_retry_delay = max_retry_delay
        self.poll_records = poll_records
        self.rows_per_message = float(max(1, settings.batch_events))  # running estimate, sizes the polls
        self.stats = SinkStats()
        self.writer = StoreWriter(settings, ttl_days)
        self.codecs, self.schemas = kafka.codecs_with_schema_topic(settings)
        self.codec_of = {settings.topics.enriched: (self.codecs.enriched, store.EVENTS),
                         settings.topics.alerts: (self.codecs.alert, store.ALERTS),
                         settings.topics.stats: (self.codecs.stats, store.STATS)}
        self.pending = Batch()
        self.inflight: asyncio.Task | None = None
        self.inflight_rows = 0
        self.lag: dict[str, int] = {}
        self.consumer = None
        self.sender: kafka.Sender | None = None
        self.dead: kafka.DeadLetters | None = None

    # -- consuming
    async def add(self, messages: list[ConsumerRecord]) -> None:
        """Decode messages into the pending batch (corrupt ones are noted for the dead-letter topic)."""
        for msg in messages:
            self.stats.messages += 1
            self.pending.note(msg)
            codec, table = self.codec_of[msg.topic]
            with kafka.process_span("sink", msg) as span:
                trace_id = telemetry.trace_id_of(msg.headers) or telemetry.current_trace_id()
                try:
                    records = await kafka.decode_or_refresh(codec, msg.value or b"", self.schemas)
                except CodecError as e:
                    span.set_attribute("fimstream.error", str(e))
                    self.pending.dead.append((msg, str(e)))
                    continue
                span.set_attribute("fimstream.rows", len(records))
                if records:
                    self.pending.items.append(Item(msg, table, records, trace_id, span.get_span_context()))
                    self.pending.rows += len(records)
                    self.rows_per_message += (len(records) - self.rows_per_message) * 0.1
        self.stats.pending_rows = self.pending.rows

    def poll_size(self) -> int:
        """Messages to ask for so the pending batch ends near batch_rows (a batch is at least one message)."""
        room = max(0, self.batch_rows - self.pending.rows)
        return max(1, min(self.poll_records, int(room / self.rows_per_message + 0.5)))

    def due(self) -> bool:
        return bool(self.pending) and (self.pending.rows >= self.batch_rows
                                       or time.monotonic() - self.pending.started >= self.batch_age)

    async def flush(self) -> None:
        """Hand the pending batch to the writer (after the previous insert finished and was committed)."""
        if not self.pending:
            return
        await self.wait_inflight()
        batch, self.pending = self.pending, Batch()
        self.stats.pending_rows = 0
        self.inflight_rows = batch.rows
        self.inflight = asyncio.create_task(self._write(batch), name="sink-insert")

    async def wait_inflight(self) -> None:
        """Wait for the insert in flight. Meanwhile the consumer is paused but polled, so the group keeps
        it (back-pressure without a rebalance); records of partitions assigned meanwhile are kept."""
        if self.inflight is None:
            return
        t0 = last_lag = time.monotonic()
        while not self.inflight.done():
            done, _ = await asyncio.wait({self.inflight}, timeout=0.5)
            if done:
                break
            self.consumer.pause(*self.consumer.assignment())
            got = await self.consumer.getmany(timeout_ms=0)
            await self.add([m for part in got.values() for m in part])
            if time.monotonic() - last_lag > 5:
                await self.update_lag(fresh=True)
                last_lag = time.monotonic()
        waited = time.monotonic() - t0
        if waited > 0.5:
            self.stats.backpressure_ms += waited * 1000
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())
        task, self.inflight = self.inflight, None
        task.result()  # a bug in _write must not pass silently

    async def _write(self, batch: Batch) -> None:
        tables, bad = await asyncio.to_thread(build_tables, batch)
        for item, reason in bad:
            batch.dead.append((item.msg, reason))
        links = [trace.Link(i.span) for i in batch.items[:64] if i.span is not None]
        with telemetry.tracer("fimstream.sink").start_as_current_span(
                "sink.insert", links=links, attributes={"fimstream.rows": sum(len(t) for _, t in tables)}):
            await self._insert_with_retry(tables)
        for msg, reason in batch.dead:
            await self.dead.send(msg, reason)
        await self.sender.drain()  # dead letters acknowledged before their offsets are committed
        for table, data in tables:
            if table is store.EVENTS:
                self.stats.rows_events += data.num_rows
            elif table is store.ALERTS:
                self.stats.rows_alerts += data.num_rows
            else:
                self.stats.rows_stats += data.num_rows
        self.stats.batches += 1
        await self._commit(batch)

    async def _insert_with_retry(self, tables: list[tuple[store.Table, pa.Table]]) -> None:
        delay = 0.2
        remaining = list(tables)
        while remaining:
            t0 = time.monotonic()
            try:
                table, data = remaining[0]
                await asyncio.to_thread(self.writer.insert, [(table, data)])
            except Exception as e:  # store down, network, server errors: keep the batch, try again
                self.stats.insert_retries += 1
                self.stats.insert_failures_now += 1
                self.health.info["store_error"] = f"{type(e).__name__}: {e}"[:500]
                log.warning("insert into %s failed (%s: %s); retry %d in %.1fs", remaining[0][0].name,
                            type(e).__name__, str(e)[:300], self.stats.insert_failures_now, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            ms = (time.monotonic() - t0) * 1000
            self.stats.insert_ms_last = ms
            self.stats.insert_ms_max = max(self.stats.insert_ms_max, ms)
            self.stats.insert_ms_total += ms
            if self.stats.insert_failures_now:
                log.info("store available again after %d failed attempts", self.stats.insert_failures_now)
                self.stats.insert_failures_now = 0
                self.health.info.pop("store_error", None)
            remaining.pop(0)  # a table that made it is not inserted again when the next one is retried

    async def _commit(self, batch: Batch) -> None:
        try:
            await self.consumer.commit({tp: off for tp, off in batch.offsets.items()})
        except (CommitFailedError, KafkaError) as e:
            # partitions moved to another sink meanwhile: it reads these rows again; the table collapses them
            self.stats.commit_failures += 1
            log.warning("commit failed (%s); the rows are stored and will be replayed by the new owner", e)

    async def update_lag(self, fresh: bool = False) -> None:
        """Lag per partition from the fetch metadata, or (fresh) from the broker: while the consumer is
        paused nothing is fetched, and `fimstream status` must still see the lag grow."""
        tps = list(self.consumer.assignment())
        ends: dict = {}
        if fresh and tps:
            try:
                ends = await self.consumer.end_offsets(tps)
            except KafkaError:
                return
        for tp in tps:
            hw = ends.get(tp) if fresh else self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await self.consumer.position(tp)
            except KafkaError:
                continue
            self.lag[f"{tp.topic}/{tp.partition}"] = max(0, hw - pos)

    def counters(self) -> dict:
        s = self.stats
        return {"messages": s.messages, "rows_inserted": s.rows_events + s.rows_alerts + s.rows_stats,
                "rows_events": s.rows_events, "rows_alerts": s.rows_alerts, "rows_stats": s.rows_stats, "batches": s.batches, "insert_ms_last": round(s.insert_ms_last, 1),
                "insert_ms_max": round(s.insert_ms_max, 1),
                "insert_ms_avg": round(s.insert_ms_total / s.batches, 1) if s.batches else 0.0,
                "insert_retries": s.insert_retries, "store_failing": s.insert_failures_now,
                "rows_dropped": s.rows_dropped, "rows_left_for_replay": s.rows_left_for_replay,
                "commit_failures": s.commit_failures, "pending_rows": s.pending_rows,
                "backpressure_ms": round(s.backpressure_ms), "dead_letters": self.dead.count if self.dead else 0,
                "lag": sum(self.lag.values())}

    # -- the loop
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            timeout = self.batch_age
            if self.pending:
                timeout = max(0.0, self.batch_age - (time.monotonic() - self.pending.started))
            got = await self.consumer.getmany(timeout_ms=int(min(timeout, 0.2) * 1000),
                                              max_records=self.poll_size())
            messages = [m for part in got.values() for m in part]
            if messages:
                await self.add(messages)
                self.health.info["last_message_time"] = time.time()
            if self.due():
                await self.flush()
                await self.update_lag()
            elif self.inflight is not None and self.inflight.done():
                await self.wait_inflight()  # surface a finished insert's error at once

    async def drain(self, timeout: float) -> None:
        """At shutdown: write what was read, within `timeout`; anything not committed is read again later."""
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except asyncio.TimeoutError:
            inflight = self.inflight is not None and not self.inflight.done()
            self.stats.rows_left_for_replay += self.pending.rows + (self.inflight_rows if inflight else 0)
            log.warning("store unavailable at shutdown: uncommitted rows stay in Kafka and are read again")
            if self.inflight is not None:
                self.inflight.cancel()
                await asyncio.gather(self.inflight, return_exceptions=True)

    async def _drain(self) -> None:
        await self.flush()
        await self.wait_inflight()


async def run(settings: Settings, stop: asyncio.Event, health: Health, *, batch_rows: int = 50000,
              batch_age: float = 0.5, serve_queries: bool = True, query_writable: bool = False,
              ttl_days: int | None = None, max_retry_delay: float = 10.0, drain_timeout: float = 20.0,
              **_options) -> None:
    """The sink stage (services run through fimstream.service.run_stage).

    batch_rows / batch_age: insert when this many rows are pending or the oldest is this old (seconds).
    serve_queries: serve the ClickHouse HTTP endpoint on settings.query_listen (embedded store only).
    query_writable: every endpoint client may write (default: only holders of <state_dir>/query-token).
    ttl_days: delete rows older than this (0 = keep; default: settings.store_ttl_days if it exists).
    """
    if ttl_days is None:
        ttl_days = int(getattr(settings, "store_ttl_days", 0) or 0)
    await kafka.ensure_topics(settings)
    sink = Sink(settings, health, batch_rows=batch_rows, batch_age=batch_age, ttl_days=ttl_days,
                max_retry_delay=max_retry_delay)
    endpoint = producer = None
    try:
        if store.is_embedded(settings.store_url):
            # open the engine first: the endpoint and the inserts share it (and it fails fast if it is locked)
            await asyncio.to_thread(sink.writer.insert, [])
            if serve_queries:
                from fimstream.sink.endpoint import QueryEndpoint

                endpoint = QueryEndpoint(settings.chdb_path, settings.query_listen,
                                         write_token=store.query_token(settings, create=True),
                                         writable=query_writable).start()
                health.info["query_endpoint"] = endpoint.url
                health.add_source(lambda: {f"endpoint_{k}": v for k, v in endpoint.stats.items()})
        producer = kafka.make_producer(settings)
        await producer.start()
        sink.sender = kafka.Sender(producer)
        sink.dead = kafka.DeadLetters(sink.sender, settings.topics.deadletter, "sink")
        consumer = kafka.make_consumer(settings, settings.topics.enriched, settings.topics.alerts,
                                       settings.topics.stats, group_id=settings.group("sink"))
        await consumer.start()
        sink.consumer = consumer
        health.add_source(sink.counters)
        health.info.update(store=store.redact_url(settings.store_url), group=settings.group("sink"))
        health.status = "running"
        log.info("sink running: %s, %s -> %s", settings.topics.enriched, settings.topics.alerts,
                 store.redact_url(settings.store_url))
        try:
            await sink.run(stop)
        finally:
            health.status = "stopping"
            await sink.drain(drain_timeout)
            await sink.consumer.stop()
            await sink.sender.drain()
    finally:  # whatever failed, release the port, the producer and the chDB engine
        if producer is not None:
            await producer.stop()
        if endpoint is not None:
            endpoint.stop()
        await asyncio.to_thread(sink.writer.close)
