"""The rule set in the collector: one RuleSetHolder (files in `settings.rules`, re-read when they change,
or a `rules` control message as the detector applies it) feeding every part that acts on rules in the
kernel: the in-kernel filter (policy.py) and enforcement (enforce.py).

A rule set that does not compile never replaces the one in force; when the very first load fails the
collector keeps running unfiltered (every event goes to the detector, which reports the same error) and
says so in its health info (`rules_error`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger(__name__)


class CollectorRules:
    def __init__(self, settings, health):
        self.settings = settings
        self.health = health
        self.holder = None
        self.appliers: list[tuple[str, Callable]] = []  # (name, apply(ruleset)); each failure is its own
        self.failure_listeners: list[Callable] = []
        self.error = ""

    def on_rules(self, name: str, apply: Callable, failed: Callable | None = None) -> None:
        """apply(ruleset) for every rule set put in force; failed(error) when new rules are rejected."""
        self.appliers.append((name, apply))
        if failed is not None:
            self.failure_listeners.append(failed)

    def start(self) -> None:
        """Blocking (rule compile, map writes, verifier): run it in an executor."""
        from fimstream.rules import RuleError, RuleSetHolder

        try:
            self.holder = RuleSetHolder(self.settings.rules, on_change=self._apply, on_error=self._failed)
        except (RuleError, OSError) as e:
            log.error("rules in %s do not load: no in-kernel filtering, no enforcement: %s", self.settings.rules, e)
            self._failed(e)
            return
        self._apply(self.holder.current)
        self.holder.start()

    def _apply(self, ruleset) -> None:
        self.error = ""
        for name, apply in self.appliers:
            try:
                apply(ruleset)
            except Exception as e:  # noqa: BLE001 - one part failing must not stop the others
                log.exception("%s: rules %s could not be applied", name, ruleset.version[:12])
                self.error = f"{name}: {e}"
        self._report(ruleset)

    def _failed(self, error) -> None:
        log.error("rules rejected, the rules in force stay: %s", error)
        self.error = str(error)
        for failed in self.failure_listeners:
            failed(error)
        self._report(self.holder.current if self.holder else None)

    def _report(self, ruleset) -> None:
        info = self.health.info
        info["rules_version"] = ruleset.version[:12] if ruleset is not None else ""
        if self.error:
            info["rules_error"] = self.error
        else:
            info.pop("rules_error", None)

    def apply_control(self, payload: bytes) -> None:
        if self.holder is not None:
            log.info("rules control message: %s", self.holder.apply_control(payload))

    async def follow_control(self, stop: asyncio.Event) -> None:
        """`rules` control messages, retried while Kafka is away."""
        from fimstream import kafka

        async def apply(key, value) -> None:
            if key == b"rules":
                await asyncio.to_thread(self.apply_control, value)
        while not stop.is_set():
            try:
                await kafka.follow_control(self.settings, stop, apply)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - no broker yet: try again later
                log.debug("control topic: %s", e)
                try:
                    await asyncio.wait_for(stop.wait(), 5.0)
                except asyncio.TimeoutError:
                    pass

    def close(self) -> None:
        if self.holder is not None:
            self.holder.stop()
