"""Kafka plumbing against the real embedded broker."""
import asyncio

import pytest

from fimstream import kafka
from fimstream.broker import EmbeddedBroker, free_port
from fimstream.config import Settings
from fimstream.events import raw_event
from fimstream.schemas.codec import Codecs, SchemaRegistry
from tests.stages.helpers import consume as _consume_all


def test_dead_letter_carries_reason_and_source(settings):
    async def main():
        await kafka.ensure_topics(settings)
        producer = kafka.make_producer(settings)
        await producer.start()
        sender = kafka.Sender(producer)
        await (await sender.send(settings.topics.raw, b"garbage", key=b"host"))
        [msg] = await _consume_all(settings, settings.topics.raw, 1)
        dlq = kafka.DeadLetters(sender, settings.topics.deadletter, "enricher")
        await dlq.send(msg, "bad magic 6761")
        await sender.drain()
        await producer.stop()
        [dead] = await _consume_all(settings, settings.topics.deadletter, 1)
        headers = dict(dead.headers)
        assert dead.value == b"garbage" and dead.key == b"host"
        assert headers[kafka.H_ERROR] == b"bad magic 6761"
        assert headers[kafka.H_SOURCE] == f"{settings.topics.raw}/{msg.partition}/{msg.offset}".encode()
        assert headers[kafka.H_STAGE] == b"enricher"
    asyncio.run(main())


def test_schema_topic_lets_an_old_reader_learn_a_new_writer(settings):
    import copy
    async def main():
        await kafka.ensure_topics(settings)
        current = Codecs()
        sources = copy.deepcopy(current.sources)
        sources["raw"]["fields"].append({"name": "added_later", "type": "string", "default": ""})
        newer = Codecs(sources=sources)
        producer = kafka.make_producer(settings)
        await producer.start()
        sender = kafka.Sender(producer)
        await kafka.SchemaTopic(settings, newer.registry).publish(sender, newer.all())
        await producer.stop()
        payload = newer.raw.encode_batch([{**raw_event("open", "/etc/passwd"), "added_later": "x"}])
        old = Codecs(registry=SchemaRegistry())
        topic = kafka.SchemaTopic(settings, old.registry)
        [ev] = await kafka.decode_or_refresh(old.raw, payload, topic)
        assert ev["file"]["path"] == b"/etc/passwd" and "added_later" not in ev
    asyncio.run(main())


def test_sender_buffers_while_broker_is_down_and_delivers_later(tmp_path):
    """Nothing is lost when the broker is unreachable for a while: sends retry until acknowledged."""
    port = free_port()
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", partitions=1)
    async def main():
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "b.log").start()
        await kafka.ensure_topics(settings, [settings.topics.raw])
        producer = kafka.make_producer(settings, request_timeout_ms=3000)
        await producer.start()
        sender = kafka.Sender(producer)
        broker.stop()  # memory storage: the topic is gone with it; ensure_topics below creates it again
        tasks = [await sender.send(settings.topics.raw, f"m{i}".encode(), key=b"k") for i in range(5)]
        await asyncio.sleep(4)
        # every first attempt has timed out (request_timeout_ms=3000): the Sender holds the messages. An
        # attempt still queued in aiokafka when the broker comes back would be sent on the producer's stale
        # metadata before the topic exists, and Tansu acknowledges such a produce and drops the records.
        async with asyncio.timeout(30):
            while sender.stats.retries < 5:
                await asyncio.sleep(0.1)
        assert not any(t.done() for t in tasks) and sender.pending_bytes > 0
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "b2.log").start()
        try:
            await kafka.ensure_topics(settings, [settings.topics.raw])
            await asyncio.wait_for(sender.drain(), 60)
            assert sender.stats.retries > 0 and sender.stats.messages == 5
            msgs = await _consume_all(settings, settings.topics.raw, 5)
            assert sorted(m.value for m in msgs) == [f"m{i}".encode() for i in range(5)]
        finally:
            await producer.stop()
            broker.stop()
    asyncio.run(main())


def test_sender_back_pressure_is_measured(settings):
    async def main():
        await kafka.ensure_topics(settings, [settings.topics.raw])
        producer = kafka.make_producer(settings)
        await producer.start()
        sender = kafka.Sender(producer, max_pending_bytes=10_000)
        for _ in range(50):
            await sender.send(settings.topics.raw, b"x" * 4000)
        await sender.drain()
        await producer.stop()
        assert sender.stats.messages == 50 and sender.stats.backpressure_ns > 0
    asyncio.run(main())
