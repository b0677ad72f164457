"""collector_events_lost on the real collector service: a burst that overflows its Kafka buffer makes a
`loss` event on the raw topic (embedded broker), which the pack turns into an alert; the same burst with
room to spare makes no loss event and no alert."""
from __future__ import annotations

import asyncio
import copy
import sys

import pytest

from collector.conftest import root_only
from collector.test_service import _consume, _start  # the collector stage, as tests/collector runs it
from fimstream.events import _templates

from .harness import fires, quiet

pytestmark = [root_only, pytest.mark.root]


def _burst(settings, tmp_path, want, **options) -> list[dict]:
    """5,000 opens while the collector stage runs with every event published; the raw records read back
    until want(records, burst path)."""
    path = tmp_path / "burst"
    path.write_bytes(b"")
    code = f"import os\nfor _ in range(5000): os.close(os.open({str(path)!r}, os.O_RDONLY))"
    settings.kernel_filter = False  # every open must reach userspace
    settings.state_dir.mkdir(parents=True, exist_ok=True)

    async def main():
        stop, health, task = await _start(settings, **options)
        try:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
            await proc.wait()
            records, _ = await _consume(settings, lambda recs: want(recs, str(path).encode()), timeout=20)
        finally:
            stop.set()
            await task
        return records
    return asyncio.run(main())


def _alerts(pack, records) -> list[tuple[str, dict]]:
    out = []
    for raw in records:
        rec = dict(raw, **copy.deepcopy(_templates()["enrichment"]))
        out += [(r.id, rec) for r in pack.match(rec)]
    return out


@fires("collector_events_lost")
def test_a_full_buffer_raises_collector_events_lost(pack, settings, tmp_path):
    records = _burst(settings, tmp_path, lambda recs, _: any(r["event_type"] == "loss" for r in recs),
                     max_buffered_events=50)
    hits = [rec for rid, rec in _alerts(pack, records) if rid == "collector_events_lost"]
    assert hits, "the loss event must raise the alert"
    assert int(hits[0]["attrs"]["userspace_dropped"]) > 0 and hits[0]["process"]["comm"] == "fimstream-collector"


@quiet("collector_events_lost")
def test_the_same_burst_with_room_is_quiet(pack, settings, tmp_path):
    records = _burst(settings, tmp_path, lambda recs, path: sum(
        1 for r in recs if r["file"] and r["file"]["path"] == path) >= 5000)
    assert sum(1 for r in records if r["file"] and r["file"]["path"].endswith(b"/burst")) >= 5000
    assert not [r for r in records if r["event_type"] == "loss"]
    assert "collector_events_lost" not in {rid for rid, _ in _alerts(pack, records)}
