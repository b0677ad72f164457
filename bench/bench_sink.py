"""Sink throughput: rows/s from Kafka (embedded Tansu) into embedded chDB, and the effect of batch size.

    .venv/bin/python bench/bench_sink.py [--events 200000] [--per-message 200] [--batch-rows 2000,10000,50000]

First the parts, one core, per row: Avro decode (schemas/codec), Arrow conversion (store.EVENTS.arrow), and
the chDB insert by batch size (Arrow, as the sink does, and clickhouse-connect's Native columns for
comparison). Then the whole stage: N enriched events are published as messages of --per-message events
(a realistic mix: library/config/home/tmp paths, args, two ancestors, Kubernetes labels on a third), and
for each batch size the sink stage runs in this process on a fresh chDB path and a fresh copy of the topic.
The time runs from the first message read to the last row inserted (the consumer group join, ~5 s on Tansu,
is left out). Prints one line per configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fimstream import kafka, store  # noqa: E402
from fimstream.broker import EmbeddedBroker  # noqa: E402
from fimstream.config import Settings, Topics  # noqa: E402
from fimstream.events import enriched_event  # noqa: E402
from fimstream.health import Health  # noqa: E402
from fimstream.schemas.codec import Codecs  # noqa: E402

codecs = Codecs()


def make_events(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    procs = [(b"/usr/bin/gcc", "gcc", [b"gcc", b"-O2", b"-c", b"x.c"]), (b"/usr/bin/python3.11", "python3", [b"python3", b"app.py"]),
             (b"/usr/bin/git", "git", [b"git", b"status"]), (b"/usr/sbin/nginx", "nginx", [b"nginx", b"-g", b"daemon off;"])]
    ancestors = [{"pid": 1, "comm": "systemd", "exe": b"/lib/systemd/systemd"},
                 {"pid": 812, "comm": "containerd-shim", "exe": b"/usr/bin/containerd-shim-runc-v2"}]
    out = []
    for i in range(n):
        exe, comm, args = rnd.choice(procs)
        path = rnd.choice([f"/usr/lib/x86_64-linux-gnu/lib{rnd.randint(0, 300)}.so.6", "/etc/ld.so.cache",
                           f"/home/dev/src/proj/mod{rnd.randint(0, 500)}/file.c", f"/tmp/cc{rnd.randint(0, 99999)}.s"])
        kw = {}
        if i % 3 == 0:
            kw = dict(container_id=f"{rnd.randint(0, 20):064x}", container_runtime="containerd", enrich_status="kubernetes",
                      k8s={"namespace": "prod", "pod": f"web-{rnd.randint(0, 20)}", "labels": {"app": "web", "tier": "front"},
                           "workload_kind": "Deployment", "workload_name": "web", "node": "node-1"})
        out.append(enriched_event(rnd.choice(["open", "open", "open", "write", "create", "unlink", "exec"]), path,
                                  process={"exe": exe, "comm": comm, "args": args, "ancestors": ancestors,
                                           "pid": rnd.randint(100, 60000)}, flags=0o100, **kw))
    return out


def parts(events: list[dict], batch_sizes: list[int], state: Path) -> None:
    payload = codecs.enriched.encode_batch(events[:max(batch_sizes)])
    t = time.perf_counter()
    decoded = codecs.enriched.decode_batch(payload)
    decode_us = (time.perf_counter() - t) / len(decoded) * 1e6
    trace = ["0af7651916cd43dd8448eb211c80319c"] * len(decoded)
    store.EVENTS.arrow(decoded[:100], trace[:100])  # warm up
    t = time.perf_counter()
    store.EVENTS.arrow(decoded, trace)
    arrow_us = (time.perf_counter() - t) / len(decoded) * 1e6
    print(f"parts (one core): Avro decode {decode_us:.1f} us/row, Arrow conversion {arrow_us:.1f} us/row")
    client = store.open_client(f"chdb://{state}")
    try:
        store.ensure_schema(client)
        names = store.EVENTS.column_names
        types = [c.ch_type for c in store.EVENTS.columns]
        for size in sorted({min(size, len(decoded)) for size in batch_sizes}):
            data = store.EVENTS.arrow(decoded[:size], trace[:size])
            lists = store.EVENTS.column_lists(decoded[:size], trace[:size])
            lists[1] = [int.from_bytes(b, "big") for b in lists[1]]  # clickhouse-connect's UUID input
            reps = max(3, 60000 // size)
            store.insert_arrow(client, store.EVENTS, data)  # warm up
            t = time.perf_counter()
            for _ in range(reps):
                store.insert_arrow(client, store.EVENTS, data)
            arrow_rate = reps * size / (time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(reps):
                client.insert("events", lists, column_names=names, column_type_names=types, column_oriented=True)
            native_rate = reps * size / (time.perf_counter() - t)
            print(f"  chDB insert, {size:>6} rows/insert: Arrow {arrow_rate:>9,.0f} rows/s   "
                  f"Native columns {native_rate:>9,.0f} rows/s")
    finally:
        client.close()


async def publish(settings: Settings, events: list[dict], per_message: int) -> None:
    await kafka.ensure_topics(settings, [settings.topics.enriched, settings.topics.alerts, settings.topics.deadletter,
                                         settings.topics.schemas])
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        futures = []
        for i in range(0, len(events), per_message):
            payload = codecs.enriched.encode_batch(events[i:i + per_message])
            futures.append(await producer.send(settings.topics.enriched, payload, key=f"c{i % 7}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def stage(settings: Settings, n: int, batch_rows: int) -> tuple[float, dict]:
    from fimstream.sink import service

    stop = asyncio.Event()
    health = Health(settings.state_dir, "sink")
    task = asyncio.create_task(service.run(settings, stop, health, batch_rows=batch_rows, batch_age=0.5,
                                           serve_queries=False))
    first = None
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("sink stopped")
            c = health.snapshot()["counters"]
            if first is None and c.get("messages", 0) > 0:
                first = time.perf_counter()
            if c.get("rows_inserted", 0) >= n:
                return time.perf_counter() - first, c
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=200)
    ap.add_argument("--batch-rows", default="2000,10000,50000")
    ap.add_argument("--skip-parts", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.batch_rows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fimstream-bench-sink-"))
    print(f"generating {args.events:,} events ...", flush=True)
    events = make_events(args.events)
    try:
        if not args.skip_parts:
            parts(events, sizes, work / "parts")
        with EmbeddedBroker(log_path=work / "tansu.log") as broker:
            for size in sizes:
                prefix = f"b{uuid.uuid4().hex[:6]}"
                topics = Topics(**{k: f"{prefix}.{v}" for k, v in vars(Topics()).items()})
                settings = Settings(kafka_bootstrap=broker.bootstrap, topics=topics, partitions=2,
                                    state_dir=work / prefix)
                asyncio.run(publish(settings, events, args.per_message))
                seconds, c = asyncio.run(stage(settings, args.events, size))
                print(f"stage Kafka -> chDB, batch_rows {size:>6}: {args.events / seconds:>9,.0f} rows/s "
                      f"({args.events:,} rows in {seconds:.2f} s; {c['batches']} inserts, "
                      f"avg {c['insert_ms_avg']:.0f} ms, max {c['insert_ms_max']:.0f} ms; retries {c['insert_retries']})",
                      flush=True)
                shutil.rmtree(work / prefix, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
