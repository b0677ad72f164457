"""The store library against real chDB: DDL, conversion of decoded Avro records, byte-exact paths."""
from fimstream import store
from fimstream.events import enriched_event
from fimstream.schemas.codec import Codecs

REQUIRED = {"time", "event_id", "host", "event_type", "file_path", "process_pid", "process_ppid", "process_uid",
            "process_exe", "process_comm", "container_id", "k8s_namespace", "k8s_pod", "process_args",
            "process_ancestors", "k8s_labels", "attrs", "trace_id", "target_path", "cred_new_uid", "net_remote_addr"}


def _columns(client, table):
    rows = client.query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                        parameters={"t": table}).result_rows
    return dict(rows)


def test_schema_is_created_idempotently_and_migrated(store_settings):
    client = store.open_client(store_settings)
    try:
        store.ensure_schema(client)
        store.ensure_schema(client)  # second start: nothing changes, nothing fails
        events, alerts = _columns(client, "events"), _columns(client, "alerts")
        assert REQUIRED <= set(events)
        assert REQUIRED - {"time"} | {"rule_id", "severity", "message", "alert_id", "event_time",
                                      "related_event_ids", "severity_level"} <= set(alerts)
        assert events["time"] == "DateTime64(9, 'UTC')" and events["event_id"] == "UUID"
        assert events["process_args"] == "Array(String)" and events["k8s_labels"] == "Map(String, String)"
        engine = client.query("SELECT engine, partition_key, sorting_key FROM system.tables WHERE name = 'events' "
                              "AND database = currentDatabase()").result_rows[0]
        assert engine[0] == "ReplacingMergeTree" and engine[1] == "toYYYYMMDD(time)"
        assert engine[2].endswith("event_id")
        # a build that adds a column: the next start adds it to the existing table
        client.command("ALTER TABLE events DROP COLUMN attrs")
        store.ensure_schema(client, ttl_days=30)
        assert "attrs" in _columns(client, "events")
        assert "toIntervalDay(30)" in client.command("SHOW CREATE TABLE events")
        store.ensure_schema(client, ttl_days=0)
        assert "TTL" not in client.command("SHOW CREATE TABLE events")
    finally:
        client.close()


def test_records_become_rows_byte_for_byte(store_settings):
    codecs = Codecs()
    long_path = b"/etc/" + b"\xff\xfe" * 2045 + b"x"  # 4096 bytes, not UTF-8
    assert len(long_path) == 4096
    ev = enriched_event("rename", long_path, target=b"/etc/\xc3(", flags=2,
                        process={"args": [b"mv", b"\x80\x81"], "exe": b"/usr/bin/\xe9mv",
                                 "ancestors": [{"pid": 1, "comm": "systemd", "exe": b"/lib/systemd/systemd"}]},
                        container_id="c" * 64, k8s={"namespace": "prod", "pod": "web-1", "labels": {"app": "web"}},
                        attrs={"k": "v"})
    plain = enriched_event("open", "/etc/hosts")
    decoded = codecs.enriched.decode_batch(codecs.enriched.encode_batch([ev, plain]))  # as the sink sees them
    client = store.open_client(store_settings)
    try:
        store.ensure_schema(client)
        store.insert_arrow(client, store.EVENTS, store.EVENTS.arrow(decoded, ["0af7651916cd43dd8448eb211c80319c"] * 2))
        row = client.query(
            "SELECT file_path, target_path, process_exe, process_args, process_ancestors, toString(event_id), "
            "toUnixTimestamp64Nano(time), event_type, k8s_labels, k8s_namespace, container_id, trace_id, cred_new_uid, "
            "attrs FROM events WHERE event_type = 'rename'", query_formats={"String": "bytes"}).result_rows[0]
        assert row[0] == long_path and row[1] == b"/etc/\xc3(" and row[2] == b"/usr/bin/\xe9mv"
        assert row[3] == [b"mv", b"\x80\x81"] and row[4] == [b"/lib/systemd/systemd"]
        assert row[5].decode() == store_uuid(ev["event_id"]) and row[6] == ev["time_ns"] and row[7] == b"rename"
        assert row[8] == {b"app": b"web"} and row[9] == b"prod" and row[10] == b"c" * 64
        assert row[11] == b"0af7651916cd43dd8448eb211c80319c" and row[12] is None and row[13] == {b"k": b"v"}
        [[path, ttype]] = client.query("SELECT file_path, target_path FROM events WHERE event_type = 'open'",
                                       query_formats={"String": "bytes"}).result_rows
        assert path == b"/etc/hosts" and ttype == b""  # no target: empty path, not NULL
    finally:
        client.close()


def store_uuid(b: bytes) -> str:
    from fimstream.schemas.codec import id_hex

    return id_hex(b)
