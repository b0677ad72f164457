"""Liveness and flow of each stage: a heartbeat file per stage under <state_dir>/health/, rewritten every
second with the stage's counters. `fimstream status` reads them; nothing needs a port for it."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

HEARTBEAT_EVERY = 1.0
STALE_AFTER = 10.0


class Health:
    """Counters and state of one stage, published as <state_dir>/health/<stage>.json."""

    def __init__(self, state_dir: Path, stage: str):
        self.stage = stage
        self.path = Path(state_dir) / "health" / f"{stage}.json"
        self.started = time.time()
        self.counters: dict[str, int | float] = {}
        self.info: dict[str, Any] = {}
        self.status = "starting"
        self._sources: list[Callable[[], dict[str, Any]]] = []
        self.exports: list[Callable[[dict[str, Any]], None]] = []  # e.g. metrics.CounterExport.update

    def inc(self, name: str, n: int | float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def set(self, **values: Any) -> None:
        self.counters.update(values)

    def add_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """A callable whose dict is merged into the counters at each heartbeat (e.g. loop stats)."""
        self._sources.append(source)

    def snapshot(self) -> dict[str, Any]:
        counters = dict(self.counters)
        for source in self._sources:
            counters.update(source())
        return {"stage": self.stage, "pid": os.getpid(), "status": self.status, "time": time.time(),
                "started": self.started, "counters": counters, "info": self.info}

    def write(self) -> None:
        snap = self.snapshot()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(snap, default=str))
        os.replace(tmp, self.path)  # atomic: readers never see half a file
        for export in self.exports:
            export(snap["counters"])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.write()
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_EVERY)
            except asyncio.TimeoutError:
                pass
        self.status = "stopped"
        self.write()


def read_all(state_dir: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((Path(state_dir) / "health").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
