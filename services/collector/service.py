"""The collector stage: `fimstream collector run` (fimstream/service.py calls `run`).

Order matters: the sensors are loaded and the self-check passes before anything else, so a kernel the
collector cannot read correctly stops it at once with the reason. The ring buffer is then drained from
the event loop (epoll on the map fd) into the encoder and a bounded buffer, independently of Kafka: a
broker that is down or slow costs counted drops in userspace, never a blocked or overflowing kernel.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from fimstream.collector import records as R
from fimstream.collector.collector import Collector, read_ignore_file, trim_heap
from fimstream.collector.encoder import RawEncoder
from fimstream.collector.publisher import EventSink, Publisher
from fimstream.collector.rules_stage import CollectorRules
from fimstream.config import Settings
from fimstream.events import raw_event
from fimstream.health import Health
from fimstream.schemas.codec import Codecs

log = logging.getLogger("fimstream.collector")
DRAIN_BATCH = 8192  # records per event-loop turn: Kafka's tasks get the loop between turns
STATS_EVERY = 10.0


async def run(settings: Settings, stop: asyncio.Event, health: Health, *, ringbuf_mb: int = 32,
              max_depth: int = R.MAX_DEPTH, max_buffered_events: int = 1_000_000, selfcheck: bool = True,
              offset_overrides: dict[str, int] | None = None, **_options) -> None:
    loop = asyncio.get_running_loop()
    collector = Collector(ringbuf_bytes=ringbuf_mb << 20, max_depth=max_depth, offset_overrides=offset_overrides,
                          direct_reads=settings.direct_reads)
    health.status = "loading"
    try:
        await loop.run_in_executor(None, collector.start)  # clang + verifier: seconds; keep the heartbeat going
        if selfcheck:
            await loop.run_in_executor(None, collector.selfcheck)
    except Exception:
        collector.close()
        raise
    me = os.getpid()
    collector.set_ignored({me})
    codecs = Codecs()
    publisher = Publisher(settings, codecs, max_buffered_events=max_buffered_events)
    encoder = RawEncoder(settings.host, collector.procs, collector.boot_offset_ns)
    sink = EventSink(encoder, publisher, settings.host)
    # what we did ourselves before the kernel excluded us is still in the ring: skip it once
    collector.on_event = lambda ev: None if ev.hdr[7] == me else sink(ev)
    collector.drain()
    collector.on_event = sink
    ignore_path = settings.state_dir / "ignore.pids"
    ignored = {me} | read_ignore_file(ignore_path)
    collector.set_ignored(ignored)
    stats = Stats(collector, publisher, codecs, settings)
    health.info.update(sensors=[s.name for s in collector.program.loaded], ringbuf_mb=ringbuf_mb,
                       max_depth=max_depth, compile_seconds=round(collector.program.compile_seconds, 2),
                       failed_sensors=collector.program.failed, kernel_reads=str(collector.program.reads))
    health.add_source(stats.health)
    # drain from here on: the symlink scan and the first policy take seconds, and a busy host would fill
    # the ring meanwhile (until the policy is in, every event is emitted)
    polling = asyncio.create_task(collector.poll(stop, batch=DRAIN_BATCH))
    publishing = asyncio.create_task(publisher.run(stop))
    rules = CollectorRules(settings, health)
    enforcement = control = None
    try:
        if settings.kernel_filter:
            # symlinks first: until a namespace is scanned its path strings are judged here, not in the kernel
            found = await loop.run_in_executor(None, collector.scan_symlinks)
            health.info["symlinks_scanned"] = found
            rules.on_rules("kernel filter", collector.load_rules)
            health.add_source(collector.filter_counters)
        if settings.enforce:  # kill/deny rules: after the self-check and our own exclusion, before "running"
            from fimstream.collector.enforce import EnforcementStage
            enforcement = EnforcementStage(settings, collector, publisher, codecs, health, lambda: ignored)
            rules.on_rules("enforcement", enforcement.apply, enforcement.failed)
        await loop.run_in_executor(None, rules.start)
        trim_heap()  # what the symlink scan and the first policy freed
        control = asyncio.create_task(rules.follow_control(stop))
        health.status = "running"
        log.info("collector running: ignoring pids %s", sorted(ignored))
        ignore_mtime = None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            mtime = _mtime(ignore_path)
            if mtime != ignore_mtime:
                ignore_mtime = mtime
                new = {me} | read_ignore_file(ignore_path)
                if new != ignored:
                    ignored = new
                    collector.set_ignored(ignored)
                    log.info("ignoring pids %s", sorted(ignored))
            collector.procs.sweep()
            if enforcement is not None:
                enforcement.tick()
            stats.tick(time.monotonic())
            if publishing.done():
                publishing.result()  # surface a crash of the publishing task
    finally:
        stop.set()
        polling.cancel()  # it waits on the kernel's wake-ups, not on `stop`
        try:
            await polling
        except asyncio.CancelledError:
            pass
        if control is not None:
            control.cancel()
            try:
                await control
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping either way
                pass
        rules.close()
        if enforcement is not None:
            enforcement.close()
            enforcement.tick()  # the last decisions' events
        collector.drain()
        stats.tick(time.monotonic())
        stop.set()
        publisher.wake()
        if not publisher.connected:
            publishing.cancel()  # still waiting for a broker: nothing to finish
        try:
            await publishing
        except asyncio.CancelledError:
            pass
        await stats.flush()
        await publisher.close()
        collector.close()


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Stats:
    """Loss reporting and counters: a `loss` RawEvent whenever kernel or userspace drops grew, a
    CollectorStats record every STATS_EVERY seconds, and the health counters."""

    def __init__(self, collector: Collector, publisher: Publisher, codecs: Codecs, settings: Settings):
        self.collector = collector
        self.publisher = publisher
        self.codecs = codecs
        self.settings = settings
        self.kernel: dict[str, dict[str, int]] = {}
        self.reported_lost = 0
        self.reported_dropped = 0
        self.last_stats = time.monotonic()
        self._stats_pending: list[bytes] = []

    @property
    def ringbuf_lost(self) -> int:
        return sum(row["lost"] for row in self.kernel.values())

    def tick(self, now: float) -> None:
        self.kernel = self.collector.kernel_counters()
        lost, dropped = self.ringbuf_lost, self.publisher.dropped
        if lost > self.reported_lost or dropped > self.reported_dropped:
            self._loss_event(lost, dropped)
        if now - self.last_stats >= STATS_EVERY:
            self._stats_record(now)

    def _loss_event(self, lost: int, dropped: int) -> None:
        attrs = {"ringbuf_lost": str(lost - self.reported_lost), "userspace_dropped": str(dropped - self.reported_dropped),
                 "ringbuf_lost_total": str(lost), "userspace_dropped_total": str(dropped)}
        for kind, row in self.kernel.items():
            if row["lost"]:
                attrs[f"lost_{kind}"] = str(row["lost"])
        log.warning("events lost: %s", attrs)
        rec = raw_event("loss", host=self.settings.host, syscall="collector", attrs=attrs,
                        process={"comm": "fimstream-collector"})
        self.publisher.add(self.settings.host.encode(), self.codecs.raw.encode_record(rec), force=True)
        self.reported_lost, self.reported_dropped = lost, dropped

    def _stats_record(self, now: float) -> None:
        sender = self.publisher.sender
        rec = {"time_ns": time.time_ns(), "host": self.settings.host, "collector_id": f"{self.settings.host}/{os.getpid()}",
               "interval_ns": int((now - self.last_stats) * 1e9),
               "counters": [{"event_type": kind, **{k: row[k] for k in R.COUNTER_NAMES}}
                            for kind, row in self.kernel.items()],
               "ringbuf_lost": self.ringbuf_lost, "userspace_dropped": self.publisher.dropped,
               "kafka_backpressure_ns": sender.stats.backpressure_ns if sender else 0,
               "published": self.publisher.published}
        self.last_stats = now
        self._stats_pending.append(self.codecs.stats.encode_batch([rec]))
        asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        while self._stats_pending and self.publisher.connected:
            await self.publisher.send_other(self.settings.topics.stats, self._stats_pending.pop(0),
                                            key=self.settings.host.encode())
        del self._stats_pending[:-16]  # while Kafka is down keep only the latest few

    def health(self) -> dict:
        c, p = self.collector, self.publisher
        sender = p.sender
        out = {"events_read": c.events, "events_published": p.published, "events_dropped": p.dropped,
               "ringbuf_lost": self.ringbuf_lost, "decode_errors": c.decode_errors, "buffered": p.buffered,
               "in_flight": p.in_flight, "batches": p.batches, "kafka_connected": int(p.connected),
               "process_cache": len(c.procs), "paths_resolved": c.resolver.resolved,
               "paths_unresolved": c.resolver.unresolved,
               "backpressure_ms": sender.stats.backpressure_ns // 1_000_000 if sender else 0,
               "send_retries": sender.stats.retries if sender else 0}
        for kind, row in self.kernel.items():
            out[f"kernel_{kind}_emitted"] = row["emitted"]
            if row["lost"]:
                out[f"kernel_{kind}_lost"] = row["lost"]
        return out
