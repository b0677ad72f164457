"""Run a stage's service coroutine in-process against the real broker, and read topics."""
from __future__ import annotations

import asyncio
import contextlib
import importlib

from fimstream import kafka
from fimstream.health import Health

_running: list[asyncio.Task] = []  # stage tasks of the current test: a consumer gives up when one dies


def _check_stages() -> None:
    for task in _running:
        if task.done() and task.exception() is not None:
            raise RuntimeError(f"stage {task.get_name()} died") from task.exception()


@contextlib.asynccontextmanager
async def running_stage(stage: str, settings, **options):
    module = importlib.import_module(f"fimstream.{stage}.service")
    stop = asyncio.Event()
    health = Health(settings.state_dir, stage)
    task = asyncio.create_task(module.run(settings, stop, health, **options), name=stage)
    _running.append(task)
    try:
        yield health
    finally:
        stop.set()
        _running.remove(task)
        await asyncio.wait_for(task, 60)


async def produce(settings, topic, values, key=b"host", headers=None):
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for v in values:
            await (await producer.send(topic, v, key=key, headers=headers or []))
    finally:
        await producer.stop()


async def consume(settings, topic, n, timeout=60):
    c = kafka.make_consumer(settings, topic, group_id=None)
    await c.start()
    out = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                _check_stages()
                for part in (await c.getmany(timeout_ms=300)).values():
                    out.extend(part)
    finally:
        await c.stop()
    return out
