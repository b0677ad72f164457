"""The collector stage end to end: kernel -> ring buffer -> Avro batches on the raw topic of the real
embedded broker, decoded here with the shared codec; exclusion of the pipeline's own pids in the kernel;
a broker that is down costs counted userspace drops, never kernel-side loss."""
from __future__ import annotations

import asyncio
import os
import subprocess
import shutil
import sys
import tempfile
import time

import pytest
from aiokafka import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fimstream import kafka, telemetry
from fimstream.collector import service
from fimstream.health import Health
from fimstream.schemas.codec import Codecs

from .conftest import root_only

pytestmark = [root_only, pytest.mark.e2e]


async def _start(settings, **options):
    stop = asyncio.Event()
    health = Health(settings.state_dir, "collector")
    task = asyncio.create_task(service.run(settings, stop, health, **options))
    deadline = time.monotonic() + 60
    while health.status != "running" or not health.snapshot()["counters"].get("kafka_connected", 1):
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "collector did not start"
        await asyncio.sleep(0.1)
    return stop, health, task


async def _consume(settings, want, timeout=30.0):
    """Decode raw-topic batches until want(records) is satisfied; returns (records, messages)."""
    codecs = Codecs()
    consumer = kafka.make_consumer(settings, group_id=None)
    await consumer.start()
    records, messages = [], []
    try:
        parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout
        while not want(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                for msg in batch:
                    messages.append(msg)
                    records += codecs.raw.decode_batch(msg.value)
    finally:
        await consumer.stop()
    return records, messages


def test_file_changes_arrive_on_the_raw_topic(settings, tmp_path):
    exporter = InMemorySpanExporter()
    telemetry.setup("collector", exporter)
    d = os.fsencode(tmp_path.resolve())
    elsewhere = tempfile.mkdtemp(prefix="fimstream-unwatched-", dir="/var/tmp")
    script = b"echo hi > %s/f && mv %s/f %s/g && chmod 600 %s/g && rm %s/g && touch %s/x" % (
        d, d, d, d, d, os.fsencode(elsewhere))
    # the rules are pushed into the kernel: what they watch arrives, the rest of the directory does not
    watched = f"{tmp_path.resolve()}/?"
    settings.rules = tmp_path / "rules.yaml"
    settings.rules.write_text(f"""rules:
  - id: watched
    expression: >-
      open.file.path =~ "{watched}" || create.file.path =~ "{watched}" || write.file.path =~ "{watched}"
      || rename.file.path =~ "{watched}" || chmod.file.path =~ "{watched}" || unlink.file.path =~ "{watched}"
""")

    async def main():
        stop, health, task = await _start(settings)
        try:
            proc = subprocess.run([b"/bin/sh", b"-c", script])
            assert proc.returncode == 0

            def done(recs):
                return any(r["event_type"] == "unlink" and r["file"]["path"] == d + b"/g" for r in recs)

            records, messages = await _consume(settings, done)
            counters = health.snapshot()["counters"]
        finally:
            stop.set()
            await task
        return records, messages, counters

    records, messages, counters = asyncio.run(main())
    telemetry.shutdown()
    mine = [r for r in records if r["file"] and r["file"]["path"].startswith(d)]
    assert [(r["event_type"], r["file"]["path"], r["target"] and r["target"]["path"]) for r in mine] == [
        ("create", d + b"/f", None), ("write", d + b"/f", None), ("rename", d + b"/f", d + b"/g"),
        ("chmod", d + b"/g", None), ("unlink", d + b"/g", None)]
    shutil.rmtree(elsewhere)
    assert not [r for r in records if r["file"] and os.fsencode(elsewhere) in r["file"]["path"]], "no rule wants it"
    assert counters["filter_loads"] == 1
    create = mine[0]
    sh = os.path.realpath("/bin/sh").encode()
    assert create["process"]["exe"] == sh and create["process"]["comm"] == "sh"
    assert create["process"]["ancestors"][0]["pid"] == os.getpid() == create["process"]["ppid"]
    assert create["file"]["ino"] and create["time_ns"] == pytest.approx(time.time_ns(), abs=60e9)
    assert mine[2]["process"]["exe"] in (b"/usr/bin/mv", b"/bin/mv")
    assert all(r["process"]["pid"] != os.getpid() for r in records), "the collector must not see itself"
    assert mine[3]["process"]["args"][0] == b"chmod"  # the process cache saw the exec...
    # (the test's own processes: until the rules are in, the collector publishes everything, and other
    # processes on the host may exec while it starts)
    published_execs = [(r["process"]["pid"], r["process"]["exe"]) for r in records if r["event_type"] == "exec"
                       and os.getpid() in [r["process"]["ppid"]] + [a["pid"] for a in r["process"]["ancestors"]]]
    assert not published_execs, f"...which no rule wants published: {published_execs}"
    # every message carries its span's trace context; one span per published batch
    assert all(dict(m.headers).get("traceparent") for m in messages)
    spans = [s for s in exporter.get_finished_spans() if s.name == "collector.publish"]
    assert sum(s.attributes["events"] for s in spans) >= len(records)
    assert {m.key for m in messages} == {settings.host.encode()}  # no containers here: keyed by host
    assert counters["events_published"] >= len(mine) and counters["ringbuf_lost"] == 0


def test_pids_in_ignore_file_are_excluded_in_the_kernel(settings, tmp_path):
    d = tmp_path.resolve()
    code = "import sys; sys.stdin.readline(); open(sys.argv[1], 'w').close()"
    settings.kernel_filter = False  # exclusion by pid alone: every event of the watched process is published

    async def main():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        stop, health, task = await _start(settings)
        try:
            ignored = subprocess.Popen([sys.executable, "-c", code, str(d / "ignored")], stdin=subprocess.PIPE)
            watched = subprocess.Popen([sys.executable, "-c", code, str(d / "watched")], stdin=subprocess.PIPE)
            (settings.state_dir / "ignore.pids").write_text(f"{ignored.pid}\n")
            await asyncio.sleep(2.5)  # the file is re-read every second
            for p in (ignored, watched):
                p.communicate(b"go\n")
            records, _ = await _consume(settings, lambda recs: any(
                r["file"] and r["file"]["path"] == os.fsencode(d / "watched") for r in recs))
        finally:
            stop.set()
            await task
        return records, ignored.pid, watched.pid

    records, ignored_pid, watched_pid = asyncio.run(main())
    # both started (exec, library opens) before the ignore file named one of them; after that, nothing of it
    after = {(r["process"]["pid"], r["event_type"]) for r in records
             if r["event_type"] == "exit" or (r["file"] and r["file"]["path"].startswith(os.fsencode(d)))}
    assert (watched_pid, "create") in after and (watched_pid, "exit") in after
    assert not [kind for pid, kind in after if pid == ignored_pid]


def test_broker_down_drains_the_kernel_and_counts_userspace_drops(settings, tmp_path):
    # nothing listens there; every event published (no in-kernel filter) so that the buffer fills
    down = settings.replace(kafka_bootstrap="127.0.0.1:9", kernel_filter=False)
    path = tmp_path / "churn"
    path.write_bytes(b"")
    loop_code = f"import os\nfor _ in range(20000): os.close(os.open({str(path)!r}, os.O_RDONLY))"

    async def main():
        stop = asyncio.Event()
        health = Health(down.state_dir, "collector")
        task = asyncio.create_task(service.run(down, stop, health, max_buffered_events=2000, ringbuf_mb=8))
        while health.status != "running":
            assert not task.done(), task.exception() if task.done() else None
            await asyncio.sleep(0.1)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", loop_code)
        await proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the ring buffer is drained
            await asyncio.sleep(1.0)
            counters = health.snapshot()["counters"]
            if counters["events_dropped"] + counters["buffered"] >= 20000:
                break
        t0 = time.monotonic()
        stop.set()
        await task
        return counters, time.monotonic() - t0

    counters, stop_seconds = asyncio.run(main())
    assert counters["kafka_connected"] == 0
    assert 2000 <= counters["buffered"] <= 2005  # bounded (+ the loss reports, which are never dropped)
    assert counters["events_dropped"] >= 20000 - 2000  # counted, not silent
    assert counters["ringbuf_lost"] == 0  # the kernel side never waited on Kafka: the kernel side never waited on Kafka
    assert stop_seconds < 10


def test_drops_are_reported_as_a_loss_event_on_the_raw_topic(settings, tmp_path):
    path = tmp_path / "burst"
    path.write_bytes(b"")
    burst = f"import os\nfor _ in range(5000): os.close(os.open({str(path)!r}, os.O_RDONLY))"
    settings.kernel_filter = False  # the burst must reach userspace to overflow its buffer

    async def main():
        stop, health, task = await _start(settings, max_buffered_events=50)
        try:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", burst)
            await proc.wait()
            records, _ = await _consume(settings, lambda recs: any(r["event_type"] == "loss" for r in recs))
        finally:
            stop.set()
            await task
        return records, health.snapshot()["counters"]

    records, counters = asyncio.run(main())
    loss = [r for r in records if r["event_type"] == "loss"]
    assert loss, "drops must be published, not only logged"
    assert sum(int(r["attrs"]["userspace_dropped"]) for r in loss) <= counters["events_dropped"]
    assert int(loss[0]["attrs"]["userspace_dropped"]) > 0 and loss[0]["host"] == settings.host
