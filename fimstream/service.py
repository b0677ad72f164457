"""How every stage process runs: logging, OpenTelemetry, signals, heartbeat, then the stage's own
`run(settings, stop, health)` coroutine (services/<stage>/service.py)."""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys

from fimstream import metrics, telemetry
from fimstream.config import Settings
from fimstream.health import Health

STAGES = ("collector", "enricher", "detector", "sink")


def configure_logging(stage: str, level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {stage} %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


async def run_stage(stage: str, settings: Settings, **options) -> None:
    module = importlib.import_module(f"fimstream.{stage}.service")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = Health(settings.state_dir, stage)
    health.info.update(kafka=settings.kafka_bootstrap, host=settings.host)
    exported = metrics.setup(stage)
    if exported is not None:
        health.exports.append(exported.update)
    beat = asyncio.create_task(health.run(stop))
    telemetry.setup(stage)
    try:
        await module.run(settings, stop, health, **options)
    finally:
        stop.set()
        await beat
        telemetry.shutdown()
        if exported is not None:
            exported.shutdown()


def main(stage: str, settings: Settings, log_level: str = "INFO", **options) -> int:
    configure_logging(stage, log_level)
    try:
        asyncio.run(run_stage(stage, settings, **options))
    except KeyboardInterrupt:
        pass
    except Exception:
        logging.getLogger(stage).exception("%s stopped on an error", stage)
        return 1
    return 0
