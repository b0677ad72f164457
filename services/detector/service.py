"""The detector stage: enriched events -> rules -> alerts (Avro batches) + one JSON alert per message (SIEM).

Rules are compiled once per rule-set version (fimstream.rules) and swapped atomically on a file change
or a control message; a bad rule file never replaces the set in force. Stateful correlations come from the
same rule files (`correlations:`) and see each entity's events in order because events are keyed by
container/host. A reload keeps the state of every correlation whose kind, steps, `same` and `by` did not
change; the others start empty. Rules with `actions: [signal]` feed correlations without alerting.
"""
from __future__ import annotations

import asyncio
import logging
import time

from fimstream import kafka, telemetry
from fimstream.config import Settings
from fimstream.detector.alerts import alert_json, make_alert
from fimstream.detector.correlate import Correlator
from fimstream.health import Health
from fimstream.rules import RuleSet, RuleSetHolder
from fimstream.schemas.codec import CodecError

log = logging.getLogger("fimstream.detector")
SWEEP_EVERY_S = 10.0


class Detection:
    """Rules + correlations over one decoded batch. Kept free of Kafka so tests and benchmarks drive it."""

    def __init__(self, rules: RuleSet):
        self._active = (rules, Correlator(rules.correlations))  # swapped as one: rules and their correlations
        self.events = 0
        self.alerts = 0

    @property
    def rules(self) -> RuleSet:
        return self._active[0]

    @property
    def correlator(self) -> Correlator:
        return self._active[1]

    def swap_rules(self, rules: RuleSet) -> None:
        """Called from the reload thread: the new correlator is built aside, then both swap in one write."""
        self._active = (rules, Correlator(rules.correlations, previous=self.correlator))

    def evaluate(self, events: list[dict]) -> list[dict]:
        alerts = []
        rules, correlator = self._active  # once per batch: a reload mid-batch cannot mix two rule sets
        for event in events:
            for rule in rules.match(event):  # every match alerts unless signal-only; `actions` says what else
                if not rule.signal_only:
                    alerts.append(make_alert(event, rule.id, rule.severity, rule.render_message(event),
                                             rule.tags, rule.actions, rule.score, rule_version=rules.version[:12]))
                for fired in correlator.observe(event, rule.id, rule.score):
                    c = fired.correlation
                    alerts.append(make_alert(fired.event, c.id, c.severity, c.description, c.tags,
                                             ("alert",), fired.score, fired.related, rules.version[:12]))
        self.events += len(events)
        self.alerts += len(alerts)
        return alerts


async def run(settings: Settings, stop: asyncio.Event, health: Health, **options) -> None:
    holder = RuleSetHolder(settings.rules)  # the first load must succeed: a RuleError stops the stage
    detection = Detection(holder.current)
    holder.on_change = detection.swap_rules
    holder.start()
    log.info("rules %s loaded from %s", holder.current, settings.rules)

    await kafka.ensure_topics(settings)
    codecs, schemas = kafka.codecs_with_schema_topic(settings)
    producer = kafka.make_producer(settings)
    await producer.start()
    sender = kafka.Sender(producer)
    await schemas.publish(sender, [codecs.alert])
    dead = kafka.DeadLetters(sender, settings.topics.deadletter, "detector")
    consumer = kafka.make_consumer(settings, settings.topics.enriched, group_id=settings.group("detector"))

    async def handle(messages) -> None:
        for msg in messages:
            with kafka.process_span("detector", msg) as span:
                try:
                    events = await kafka.decode_or_refresh(codecs.enriched, msg.value, schemas)
                except CodecError as e:
                    await dead.send(msg, str(e))
                    continue
                alerts = detection.evaluate(events)
                span.set_attribute("fimstream.events", len(events))
                span.set_attribute("fimstream.alerts", len(alerts))
                if alerts:
                    headers = telemetry.inject()
                    await sender.send(settings.topics.alerts, codecs.alert.encode_batch(alerts), key=msg.key,
                                      headers=headers)
                    for alert in alerts:
                        await sender.send(settings.topics.alerts_json, alert_json(alert), key=msg.key,
                                          headers=headers)

    async def apply_control(key: bytes | None, value: bytes) -> None:
        """Operators reload rules through the control topic (key `rules`): a path, or YAML (an overlay)."""
        if key == b"rules":
            result = await asyncio.to_thread(holder.apply_control, value)
            log.info("rules control message: %s", result)

    async def sweep_loop() -> None:
        while not stop.is_set():
            await asyncio.sleep(SWEEP_EVERY_S)
            detection.correlator.sweep(time.time_ns())

    loop = kafka.ConsumeLoop(consumer, handle, sender)
    health.add_source(lambda: {"events": detection.events, "alerts": detection.alerts, "dead_letters": dead.count,
                               "rules": len(holder.current.enabled_rules), "rules_version": holder.current.version[:12],
                               "rules_error": str(holder.last_error) if holder.last_error else "",
                               "lag": sum(loop.stats.lag.values()), "last_message_time": loop.stats.last_message_time,
                               "correlation_state": detection.correlator.stats.tracked,
                               "send_retries": sender.stats.retries})
    await consumer.start()
    tasks = [asyncio.create_task(loop.run()), asyncio.create_task(kafka.follow_control(settings, stop, apply_control)),
             asyncio.create_task(sweep_loop())]
    health.status = "running"
    try:
        done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in tasks and t.exception():
                raise t.exception()
    finally:
        health.status = "stopping"
        loop.stop()  # finishes the poll in hand (handled, acknowledged, committed), then returns
        try:
            await asyncio.wait_for(asyncio.shield(tasks[0]), 20)
        except Exception:
            pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sender.drain()
        await consumer.stop()
        await producer.stop()
        holder.stop()
