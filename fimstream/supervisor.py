"""`fimstream up`: the whole pipeline on one machine, in the foreground.

Starts the embedded broker (unless an external one is configured), then sink, detector, enricher and
collector as child processes (downstream first, so nothing is produced before it can be consumed), each
logging to <state_dir>/logs/<stage>.log. A stage that dies is restarted with back-off. SIGINT/SIGTERM
stops the collector first and the sink last, so what was read from the kernel is drained into the store.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fimstream import kafka
from fimstream.broker import EmbeddedBroker
from fimstream.config import Settings

log = logging.getLogger("fimstream.up")
START_ORDER = ("sink", "detector", "enricher", "collector")
UP_FILE = "up.json"


def stage_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child stage the same settings as the supervisor."""
    env = dict(os.environ)
    env.update({
        "FIMSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FIMSTREAM_STATE_DIR": str(settings.state_dir),
        "FIMSTREAM_RULES": str(Path(settings.rules).resolve()),
        "FIMSTREAM_CLICKHOUSE_URL": settings.clickhouse_url,
        "FIMSTREAM_QUERY_LISTEN": settings.query_listen,
        "FIMSTREAM_PARTITIONS": str(settings.partitions),
        "FIMSTREAM_HOST": settings.host,
    })
    for name, value in vars(settings.topics).items():
        env[f"FIMSTREAM_TOPIC_{name.upper()}"] = value
    if "OTEL_TRACES_EXPORTER" not in os.environ:  # traces readable locally without an OTLP collector
        env["OTEL_TRACES_EXPORTER"] = "file"
        env["FIMSTREAM_TRACE_FILE"] = str(settings.state_dir / "traces.jsonl")
    return env


@dataclass
class Child:
    stage: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    next_start: float = 0.0
    log_path: Path = field(default_factory=Path)


class Supervisor:
    def __init__(self, settings: Settings, external_kafka: bool = False, stages: tuple[str, ...] = START_ORDER):
        self.settings = settings
        self.external_kafka = external_kafka
        self.stages = [s for s in START_ORDER if s in stages]
        self.children = {s: Child(s) for s in self.stages}
        self.broker: EmbeddedBroker | None = None
        self.logs = settings.state_dir / "logs"

    # ----------------------------------------------------------------------------------- lifecycle
    def start_broker(self) -> None:
        if self.external_kafka:
            return
        host, _, port = self.settings.kafka_bootstrap.rpartition(":")
        self.broker = EmbeddedBroker(port=int(port), host=host or "127.0.0.1", log_path=self.logs / "broker.log")
        self.broker.start()
        log.info("embedded broker (Tansu) on %s", self.broker.bootstrap)

    def spawn(self, child: Child) -> None:
        child.log_path = self.logs / f"{child.stage}.log"
        out = open(child.log_path, "ab")
        cmd = [sys.executable, "-m", "fimstream", child.stage, "run"]
        child.proc = subprocess.Popen(cmd, env=stage_env(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        child.started = time.monotonic()
        log.info("%s started (pid %d), log %s", child.stage, child.proc.pid, child.log_path)
        self.write_state()

    def write_state(self) -> None:
        pids = {c.stage: c.proc.pid for c in self.children.values() if c.proc and c.proc.poll() is None}
        state = {"pid": os.getpid(), "started": time.time(), "kafka_bootstrap": self.settings.kafka_bootstrap,
                 "embedded_broker": self.broker is not None, "store_url": self.settings.store_url,
                 "query_listen": self.settings.query_listen, "stages": pids,
                 "broker_pid": self.broker.proc.pid if self.broker and self.broker.proc else None}
        (self.settings.state_dir / UP_FILE).write_text(json.dumps(state, indent=2))
        # the collector must not watch the pipeline's own processes (their writes would feed back)
        ignore = [os.getpid()] + [p for s, p in pids.items() if s != "collector"]
        if state["broker_pid"]:
            ignore.append(state["broker_pid"])
        (self.settings.state_dir / "ignore.pids").write_text("".join(f"{p}\n" for p in ignore))

    async def run(self, stop: asyncio.Event) -> int:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start_broker()
        try:
            await kafka.ensure_topics(self.settings)
            for stage in self.stages:
                self.spawn(self.children[stage])
            print(f"fimstream is up: {', '.join(self.stages)}; logs in {self.logs}. "
                  f"`fimstream status` to check, Ctrl-C to stop.", flush=True)
            while not stop.is_set():
                self.reap()
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.shutdown()
        return 0

    def reap(self) -> None:
        """Restart dead stages with exponential back-off (1 s .. 60 s)."""
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                if child.proc is None and now >= child.next_start:
                    self.spawn(child)
                continue
            code = child.proc.returncode
            log.warning("%s exited with %s; see %s", child.stage, code, child.log_path)
            ran = now - child.started
            child.restarts = 0 if ran > 60 else child.restarts + 1
            child.next_start = now + min(60.0, 2.0 ** child.restarts)
            child.proc = None
            self.write_state()

    async def shutdown(self) -> None:
        for stage in reversed(self.stages):  # collector first, sink last
            child = self.children[stage]
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                for _ in range(300):
                    if child.proc.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
                else:
                    log.warning("%s did not stop in 30 s: killing it", stage)
                    child.proc.kill()
                    child.proc.wait()
                log.info("%s stopped", stage)
        if self.broker:
            self.broker.stop()
        up = self.settings.state_dir / UP_FILE
        if up.exists():
            up.unlink()


def up(settings: Settings, external_kafka: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s up %(levelname)s: %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Supervisor(settings, external_kafka).run(stop)

    return asyncio.run(main())
