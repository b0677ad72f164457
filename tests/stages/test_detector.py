import asyncio
import json
from pathlib import Path

from fimstream import kafka, telemetry
from fimstream.events import enriched_event
from fimstream.schemas.codec import Codecs, id_hex
from tests.stages.helpers import consume, produce, running_stage

RULES = Path(__file__).resolve().parents[2] / "rules"


def test_detector_alerts_on_etc_write_and_skips_benign(settings):
    codecs = Codecs()
    settings.rules = RULES
    evil = enriched_event("create", "/etc/cron.d/backdoor", process={"exe": b"/usr/bin/python3", "comm": "python3"})
    benign = enriched_event("open", "/tmp/scratch", flags=0, process={"exe": b"/usr/bin/python3", "comm": "python3"})

    async def main():
        await kafka.ensure_topics(settings)
        with telemetry.tracer("test").start_as_current_span("enricher.process"):
            headers = telemetry.inject()
            trace_id = telemetry.current_trace_id()
        await produce(settings, settings.topics.enriched,
                      [codecs.enriched.header + b"\x02\xff", codecs.enriched.encode_batch([benign, evil])],
                      headers=headers)
        async with running_stage("detector", settings) as health:
            alert_msgs = await consume(settings, settings.topics.alerts, 1)
            json_msgs = await consume(settings, settings.topics.alerts_json, 1)
            [dead] = await consume(settings, settings.topics.deadletter, 1)
        alerts = [a for m in alert_msgs for a in codecs.alert.decode_batch(m.value)]
        rule_ids = {a["rule_id"] for a in alerts}
        assert "etc_write" in rule_ids
        assert all(a["event"]["event_id"] == evil["event_id"] for a in alerts)  # nothing for the benign open
        etc = next(a for a in alerts if a["rule_id"] == "etc_write")
        assert b"/etc/cron.d/backdoor" in etc["message"].encode()
        doc = json.loads(json_msgs[0].value)
        assert doc["event_id"] == id_hex(evil["event_id"]) and doc["event"]["file"]["path"] == "/etc/cron.d/backdoor"
        assert telemetry.trace_id_of(alert_msgs[0].headers) == trace_id
        assert dict(dead.headers)[kafka.H_STAGE] == b"detector"
        assert health.snapshot()["counters"]["rules"] >= 30
    asyncio.run(main())


def test_rules_reload_from_control_topic_and_bad_rules_keep_old_set(settings):
    codecs = Codecs()
    settings.rules = RULES
    ev = enriched_event("open", "/srv/app/secret.key", flags=0)
    overlay = b"""rules:
  - id: app_secret_read
    description: the app secret was read
    expression: open.file.path == "/srv/app/secret.key"
    severity: high
"""

    async def main():
        await kafka.ensure_topics(settings)
        async with running_stage("detector", settings) as health:
            for _ in range(300):
                if health.status == "running":
                    break
                await asyncio.sleep(0.1)
            assert health.status == "running"
            await produce(settings, settings.topics.control, [b"rules:\n  - id: broken\n    expression: open.file.path ==\n"],
                          key=b"rules")
            for _ in range(100):
                if health.snapshot()["counters"]["rules_error"]:
                    break
                await asyncio.sleep(0.1)
            error = health.snapshot()["counters"]["rules_error"]
            assert "<control>:3:33" in error and "expected a field" in error
            await produce(settings, settings.topics.control, [overlay], key=b"rules")
            await asyncio.sleep(2)
            await produce(settings, settings.topics.enriched, [codecs.enriched.encode_batch([ev])])
            msgs = await consume(settings, settings.topics.alerts, 1)
        alerts = [a for m in msgs for a in codecs.alert.decode_batch(m.value)]
        assert [a["rule_id"] for a in alerts] == ["app_secret_read"]
    asyncio.run(main())
