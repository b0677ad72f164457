"""The sink stage against the real broker (Tansu) and real chDB: rows, bytes, replays, dead letters, outages,
and queries while it inserts."""
import asyncio
import io
import json
import time

import clickhouse_connect
from aiokafka import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fimstream import cli_store, kafka, store, telemetry
from fimstream.broker import free_port
from fimstream.detector.alerts import make_alert
from fimstream.events import enriched_event
from fimstream.schemas.codec import Codecs, id_hex
from fimstream.sink.endpoint import QueryEndpoint

from tests.stages.helpers import consume, produce, running_stage

codecs = Codecs()


def _client(settings, password=""):
    host, port = cli_store.endpoint_address(settings)
    return clickhouse_connect.get_client(host=host, port=port, password=password, compress=False)


async def _query(settings, sql, **kw):
    def run():
        client = _client(settings)
        try:
            return client.query(sql, **kw).result_rows
        finally:
            client.close()
    return await asyncio.to_thread(run)


async def _wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _endpoint_ready(settings):
    host, port = cli_store.endpoint_address(settings)
    await _wait_for(lambda: asyncio.to_thread(cli_store.endpoint_up, host, port), what="the query endpoint")


def _counters(health):
    return health.snapshot()["counters"]


def _events(n, prefix="/etc/f"):
    return [enriched_event("open", f"{prefix}{i}") for i in range(n)]


def test_events_and_alerts_land_with_their_columns_and_bytes(sink_settings):
    settings = sink_settings
    exporter = InMemorySpanExporter()
    telemetry.setup("sink", exporter)
    odd = b"/etc/" + b"\xff\x80" * 2045 + b"z"  # 4096 bytes, not UTF-8
    special = enriched_event("rename", odd, target=b"/etc/\xc3(new", process={"args": [b"mv", b"\xfe"], "uid": 1000},
                             container_id="ab" * 32, enrich_status="kubernetes",
                             k8s={"namespace": "prod", "pod": "web-1", "labels": {"app": "web"}})
    events = _events(250) + [special]
    alert = make_alert(special, "etc-write", "high", "write under /etc", tags=["fim"], score=7.5,
                       related=[events[0]["event_id"]])

    async def main():
        await kafka.ensure_topics(settings)
        with telemetry.tracer("test").start_as_current_span("detector.publish"):
            headers = telemetry.inject()
            trace_id = telemetry.current_trace_id()
        await produce(settings, settings.topics.enriched,
                      [codecs.enriched.encode_batch(events[:100]), codecs.enriched.encode_batch(events[100:])],
                      key=b"host", headers=headers)
        await produce(settings, settings.topics.alerts, [codecs.alert.encode_batch([alert])], headers=headers)
        async with running_stage("sink", settings, batch_age=0.2) as health:
            await _endpoint_ready(settings)

            async def landed():
                return (await _query(settings, "SELECT (SELECT count() FROM events), (SELECT count() FROM alerts)")
                        ) == [(251, 1)]
            await _wait_for(landed, what="251 events and 1 alert")
            [row] = await _query(settings, "SELECT file_path, target_path, event_type, process_uid, process_args, "
                                 "container_id, enrich_status, k8s_namespace, k8s_pod, k8s_labels, trace_id, "
                                 "toString(event_id), toUnixTimestamp64Nano(time), host FROM events "
                                 "WHERE event_type = 'rename'", query_formats={"String": "bytes"})
            [arow] = await _query(settings, "SELECT toString(alert_id), rule_id, severity, severity_level, message, "
                                  "tags, score, arrayMap(x -> toString(x), related_event_ids), toString(event_id), "
                                  "file_path, trace_id, toUnixTimestamp64Nano(event_time) FROM alerts",
                                  query_formats={"String": "bytes"})
            counters = _counters(health)
        assert row[0] == odd and row[1] == b"/etc/\xc3(new" and row[2] == b"rename" and row[3] == 1000
        assert row[4] == [b"mv", b"\xfe"] and row[5] == b"ab" * 32 and row[6] == b"kubernetes"
        assert row[7:10] == (b"prod", b"web-1", {b"app": b"web"})
        assert row[10].decode() == trace_id and row[11].decode() == id_hex(special["event_id"])
        assert row[12] == special["time_ns"] and row[13] == special["host"].encode()
        assert arow[0].decode() == id_hex(alert["alert_id"]) and arow[1:4] == (b"etc-write", b"high", 4)
        assert arow[4] == alert["message"].encode() and arow[5] == [b"fim"] and arow[6] == 7.5
        assert [x.decode() for x in arow[7]] == [id_hex(events[0]["event_id"])]
        assert arow[8].decode() == id_hex(special["event_id"]) and arow[9] == odd and arow[10].decode() == trace_id
        assert arow[11] == special["time_ns"]
        assert counters["rows_events"] == 251 and counters["rows_alerts"] == 1 and counters["rows_dropped"] == 0
        assert counters["batches"] >= 1 and counters["dead_letters"] == 0 and counters["insert_retries"] == 0
        spans = [s for s in exporter.get_finished_spans() if s.name == "sink.process"]
        assert len(spans) == 3 and all(format(s.context.trace_id, "032x") == trace_id for s in spans)
        assert any(s.name == "sink.insert" and s.links for s in exporter.get_finished_spans())
    asyncio.run(main())


async def _rewind_group(settings):
    """Commit offset 0 for the sink's group: the state a sink leaves when it stops between insert and commit.
    Done as a member of the group (a join, then a commit), which the broker accepts in any group state."""
    topics = (settings.topics.enriched, settings.topics.alerts, settings.topics.stats)
    consumer = kafka.make_consumer(settings, *topics, group_id=settings.group("sink"))
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: 0 for tp in consumer.assignment()})
    finally:
        await consumer.stop()


def test_replayed_batch_leaves_no_visible_duplicates(sink_settings):
    settings = sink_settings
    events = _events(300)
    alert = make_alert(events[0], "r1", "medium", "m")

    async def main():
        await kafka.ensure_topics(settings)
        await produce(settings, settings.topics.enriched, [codecs.enriched.encode_batch(events[:150]),
                                                           codecs.enriched.encode_batch(events[150:])])
        await produce(settings, settings.topics.alerts, [codecs.alert.encode_batch([alert])])
        async with running_stage("sink", settings, batch_age=0.2) as health:
            await _wait_for(lambda: _stored(health, 301), what="first insert")
        await _rewind_group(settings)  # restarted before the commit: everything is read and inserted again
        async with running_stage("sink", settings, batch_age=0.2) as health:
            await _endpoint_ready(settings)
            await _wait_for(lambda: _stored(health, 301), what="replayed insert")
            raw = await _query(settings, "SELECT count(), uniqExact(event_id) FROM events")
            exact = await _query(settings, "SELECT count() FROM events FINAL")
            alerts = await _query(settings, "SELECT count() FROM alerts FINAL")

            def cli(sql):
                out = io.StringIO()
                assert cli_store.query_main(settings, sql, fmt="json", out=out) == 0
                return [json.loads(line) for line in out.getvalue().splitlines()]
            via_cli = await asyncio.to_thread(cli, "SELECT count() AS n FROM events")
            alerts_cli = await asyncio.to_thread(cli, "SELECT count() AS n FROM alerts")
        assert 300 <= raw[0][0] <= 600 and raw[0][1] == 300  # copies stored until merges collapse them ...
        assert exact == [(300,)] and alerts == [(1,)]  # ... but never visible through FINAL
        assert via_cli == [{"n": 300}] and alerts_cli == [{"n": 1}]  # `fimstream query` reads with final=1
    asyncio.run(main())


async def _stored(health, rows):
    c = _counters(health)
    return c.get("rows_inserted", 0) >= rows and c.get("pending_rows", 1) == 0


def test_corrupt_message_goes_to_dead_letters_and_the_stream_goes_on(sink_settings):
    settings = sink_settings
    good = _events(20)
    garbage = codecs.enriched.header + b"\x06\x00\x01"  # a valid header, then a truncated record

    async def main():
        await kafka.ensure_topics(settings)
        await produce(settings, settings.topics.enriched, [b"not avro at all", garbage,
                                                           codecs.enriched.encode_batch(good)], key=b"k")
        async with running_stage("sink", settings, batch_age=0.2) as health:
            await _endpoint_ready(settings)
            dead = await consume(settings, settings.topics.deadletter, 2)
            await _wait_for(lambda: _stored(health, 20), what="the good batch")
            count = await _query(settings, "SELECT count() FROM events")
            counters = _counters(health)
        reasons = sorted(dict(d.headers)[kafka.H_ERROR].decode() for d in dead)
        assert reasons[0].startswith("bad magic") and reasons[1].startswith("corrupt enriched batch")
        assert {dict(d.headers)[kafka.H_STAGE] for d in dead} == {b"sink"}
        assert sorted(d.value for d in dead) == sorted([b"not avro at all", garbage])
        assert count == [(20,)] and counters["dead_letters"] == 2
    asyncio.run(main())


def test_store_outage_retries_applies_back_pressure_and_loses_nothing(sink_settings, tmp_path):
    """A ClickHouse server (here a second chDB behind the same HTTP interface) that refuses connections, then
    comes up: the sink keeps its batch, retries with back-off, stops reading, then inserts everything."""
    port = free_port()
    token = "sink-token"
    settings = sink_settings.replace(clickhouse_url=f"http://default:{token}@127.0.0.1:{port}")
    sets = [_events(400, prefix=f"/etc/set{n}/") for n in range(3)]

    async def publish(events):
        await produce(settings, settings.topics.enriched,
                      [codecs.enriched.encode_batch(events[i:i + 100]) for i in range(0, 400, 100)])

    async def main():
        await kafka.ensure_topics(settings)
        await publish(sets[0])
        endpoint = None
        try:
            async with running_stage("sink", settings, batch_rows=150, batch_age=0.2, max_retry_delay=0.5) as health:
                await _wait_for(lambda: _async(_counters(health).get("insert_retries", 0) >= 3), what="retries")
                before = _counters(health)
                assert before["rows_inserted"] == 0 and before["store_failing"] >= 3
                assert "store_error" in health.info and token not in json.dumps(health.snapshot(), default=str)
                # the next batch fills up to batch_rows and waits behind the one in flight ...
                await _wait_for(lambda: _async(_counters(health)["pending_rows"] >= 150), what="a waiting batch")
                waiting = _counters(health)["pending_rows"]
                assert waiting <= 150 + 100  # bounded: batch_rows plus at most one message
                await publish(sets[1])
                await publish(sets[2])
                await asyncio.sleep(2)  # ... and nothing more is read while the store is down: back-pressure
                assert _counters(health)["pending_rows"] == waiting and _counters(health)["rows_inserted"] == 0
                # the unread messages show as lag, so `fimstream status` can say the sink is stuck
                await _wait_for(lambda: _async(_counters(health)["lag"] >= 5), timeout=20, what="lag while paused")
                endpoint = await asyncio.to_thread(
                    QueryEndpoint(tmp_path / "server", f"127.0.0.1:{port}", write_token=token).start)
                await _wait_for(lambda: _stored(health, 1200), what="inserts after the outage")
                after = _counters(health)

                def count():
                    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, compress=False)
                    try:
                        return client.query("SELECT count(), uniqExact(event_id) FROM events FINAL").result_rows
                    finally:
                        client.close()
                rows = await asyncio.to_thread(count)
        finally:
            if endpoint is not None:
                endpoint.stop()
        assert rows == [(1200, 1200)]
        assert after["rows_dropped"] == 0 and after["store_failing"] == 0 and after["insert_retries"] >= 3
        assert after["backpressure_ms"] > 1000
    asyncio.run(main())


async def _async(value):
    return value


def test_endpoint_answers_clickhouse_connect_while_the_sink_inserts(sink_settings):
    settings = sink_settings
    total = 60 * 100

    async def main():
        await kafka.ensure_topics(settings)
        async with running_stage("sink", settings, batch_rows=300, batch_age=0.05) as health:
            await _endpoint_ready(settings)
            async def publish():
                for i in range(60):
                    await produce(settings, settings.topics.enriched, [codecs.enriched.encode_batch(_events(100))])
                    if i == 0:  # the group has joined and the sink inserts: now trickle the rest in
                        await _wait_for(lambda: _stored(health, 100), what="the first insert")
                    await asyncio.sleep(0.03)

            def poll_counts(stop_at):
                client = _client(settings)
                seen = []
                try:
                    while not seen or seen[-1] < stop_at:
                        seen.append(client.query("SELECT count() FROM events").result_rows[0][0])
                        time.sleep(0.02)
                finally:
                    client.close()
                return seen
            publisher = asyncio.create_task(publish())
            seen = await asyncio.wait_for(asyncio.to_thread(poll_counts, total), 120)
            await publisher
            counters = _counters(health)
        assert seen == sorted(seen) and seen[-1] == total
        assert any(0 < n < total for n in seen)  # answered while rows were still arriving
        assert counters["endpoint_queries"] >= len(seen) and counters["endpoint_errors"] == 0
    asyncio.run(main())


def test_a_taken_query_port_fails_the_stage_and_releases_the_engine(sink_settings):
    """The stage fails loudly (the supervisor restarts it) and leaves nothing open behind."""
    import socket

    import pytest

    settings = sink_settings
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.query_listen = f"127.0.0.1:{taken.getsockname()[1]}"

        async def main():
            await kafka.ensure_topics(settings)
            async with running_stage("sink", settings):
                await asyncio.sleep(0.1)

        with pytest.raises(OSError, match="query_listen"):
            asyncio.run(main())
    # every handle was closed: this process may open another data path (chDB allows one at a time)
    client = store.open_client(f"chdb://{settings.state_dir / 'another'}")
    client.close()


def test_collector_stats_land_one_row_per_event_type(sink_settings):
    """The collector's periodic counters become rows, so the in-kernel filter ratio is a SQL query."""
    import time as _time
    record = {"time_ns": _time.time_ns(), "host": "node-1", "collector_id": "c1", "interval_ns": 10_000_000_000,
              "counters": [{"event_type": "open", "seen": 1000, "approved": 40, "discarded": 900, "filtered": 50,
                            "emitted": 48, "lost": 2},
                           {"event_type": "exec", "seen": 10, "approved": 10, "discarded": 0, "filtered": 0,
                            "emitted": 10, "lost": 0}],
              "ringbuf_lost": 2, "userspace_dropped": 0, "kafka_backpressure_ns": 0, "published": 58}

    async def main():
        await kafka.ensure_topics(sink_settings)
        await produce(sink_settings, sink_settings.topics.stats, [codecs.stats.encode_batch([record])])
        async with running_stage("sink", sink_settings) as health:
            await _endpoint_ready(sink_settings)
            await _wait_for(lambda: asyncio.sleep(0, _counters(health).get("rows_stats", 0) >= 2), what="stats rows")
            rows = await _query(sink_settings, "SELECT event_type, seen, discarded + filtered + emitted + lost, "
                                               "ringbuf_lost FROM collector_stats ORDER BY event_type")
            [[ratio]] = await _query(sink_settings, "SELECT round(1 - sum(emitted) / sum(seen), 4) FROM collector_stats")
        assert rows == [("exec", 10, 10, 2), ("open", 1000, 1000, 2)]
        assert ratio == round(1 - 58 / 1010, 4)
    asyncio.run(main())
