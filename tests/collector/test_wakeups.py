"""How the reader learns about records (emit() in fimstream.h, Collector.poll): the first record after a
quiet spell wakes it, the records right after a wake-up wake nobody and are drained by the follow-up.
The safety poll is pushed out of reach here, so a record neither path delivers is never read."""
from __future__ import annotations

import asyncio
import os

from fimstream.collector import records as R

from .conftest import b, root_only

pytestmark = root_only
PATIENCE = 2.0  # far above the ~11 ms the scheme needs; only a record nobody drains waits this long


def test_a_lone_record_wakes_the_reader_and_the_next_one_is_drained_after_the_quiet_window(collector, d, monkeypatch):
    assert collector.filter.compiled is None, "another test left a policy loaded: opens would be filtered"
    monkeypatch.setattr(R, "SAFETY_POLL_S", 3600.0)
    first, second = d / "first", d / "second"
    for p in (first, second):
        p.write_bytes(b"x")
    seen: dict[bytes, float] = {}
    me = os.getpid()

    def record(ev) -> None:
        if ev.pid == me and ev.file is not None and ev.file.path in (b(first), b(second)):
            seen.setdefault(ev.file.path, asyncio.get_running_loop().time())

    async def arrival(path: bytes) -> float | None:
        for _ in range(int(PATIENCE / 0.005)):
            if path in seen:
                return seen[path]
            await asyncio.sleep(0.005)
        return None

    async def scenario() -> tuple[float | None, float | None]:
        collector.drain()
        collector.on_event = record
        stop = asyncio.Event()
        polling = asyncio.create_task(collector.poll(stop))
        try:
            await asyncio.sleep(0.1)  # the reader waits on the kernel now, with nothing owed
            open(first, "rb").close()
            got_first = await arrival(b(first))
            # just drained: this open comes inside the kernel's quiet window and wakes nobody
            open(second, "rb").close()
            return got_first, await arrival(b(second))
        finally:
            polling.cancel()
            try:
                await polling
            except asyncio.CancelledError:
                pass
            collector.on_event = lambda ev: None

    got_first, got_second = asyncio.run(scenario())
    assert got_first is not None, "the first record after a quiet spell did not wake the reader"
    assert got_second is not None, "a record inside the quiet window was not drained by the follow-up"
