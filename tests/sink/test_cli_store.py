"""`fimstream query` and `fimstream alerts` against real chDB: directly, and through the sink's endpoint."""
import io
import json
import time

import pytest

from fimstream import cli_store, store
from fimstream.detector.alerts import make_alert
from fimstream.events import enriched_event
from fimstream.schemas.codec import Codecs
from fimstream.sink.endpoint import QueryEndpoint

codecs = Codecs()
ODD = b"/etc/caf\xe9/\xff\n"


def _fill(settings):
    """A store with two events (one with a non-UTF-8 path) and three alerts of different age and severity."""
    ev = enriched_event("create", ODD)
    now = time.time_ns()
    alerts = [make_alert(ev, "recent-high", "high", "high one"),
              make_alert(ev, "recent-low", "low", "low one"),
              make_alert(ev, "old-critical", "critical", "old one")]
    alerts[0]["time_ns"], alerts[1]["time_ns"], alerts[2]["time_ns"] = now - 10**9, now - 2 * 10**9, now - 1200 * 10**9
    client = store.open_client(settings)
    try:
        store.ensure_schema(client)
        events = codecs.enriched.decode_batch(codecs.enriched.encode_batch([ev, enriched_event("open", "/etc/hosts")]))
        store.insert_arrow(client, store.EVENTS, store.EVENTS.arrow(events, ["t1", "t2"]))
        decoded = codecs.alert.decode_batch(codecs.alert.encode_batch(alerts))
        store.insert_arrow(client, store.ALERTS, store.ALERTS.arrow(decoded, ["t"] * 3))
        store.insert_arrow(client, store.ALERTS, store.ALERTS.arrow(decoded[:1], ["t"]))  # a replayed copy
    finally:
        client.close()


def _run(fn, *args, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = fn(*args, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def _checks(settings, where):
    code, out, err = _run(cli_store.query_main, settings,
                          "SELECT event_type, file_path, time FROM events ORDER BY event_type")
    assert code == 0 and where in err and "2 rows" in err
    lines = out.splitlines()
    assert lines[0].split() == ["event_type", "file_path", "time"] and set(lines[1]) <= {"-", " "}
    assert "/etc/caf\\xe9/\\xff\\n" in lines[2] and lines[3].startswith("open")  # escaped, one line per row
    code, out, _ = _run(cli_store.query_main, settings, "SELECT file_path, time, process_args FROM events "
                        "WHERE event_type = 'create'", fmt="json")
    [row] = [json.loads(x) for x in out.splitlines()]
    assert row["file_path"] == ODD.decode("utf-8", "backslashreplace") and len(row["time"].split(".")[1]) == 9
    code, out, _ = _run(cli_store.query_main, settings, "SELECT event_type FROM events ORDER BY 1", fmt="csv")
    assert out == "event_type\ncreate\nopen\n"
    code, out, _ = _run(cli_store.query_main, settings, "SELECT event_type FROM events ORDER BY 1 FORMAT JSONEachRow")
    assert code == 0 and out == '{"event_type":"create"}\n{"event_type":"open"}\n'  # the statement's own format
    code, out, err = _run(cli_store.query_main, settings, "SELECT nope FROM events")
    assert code == 1 and err.startswith("fimstream: Code: 47.") and "UNKNOWN_IDENTIFIER" in err
    code, _, err = _run(cli_store.query_main, settings, "DROP TABLE events")
    assert code == 2 and "without --write" in err

    code, out, err = _run(cli_store.alerts_main, settings, since="10m")
    rules = [line.split()[3] for line in out.splitlines()[2:]]
    assert code == 0 and rules == ["recent-high", "recent-low"]  # newest first, the replayed copy shown once
    _, out, _ = _run(cli_store.alerts_main, settings, since="1h")
    assert len(out.splitlines()) == 5
    code, out, err = _run(cli_store.alerts_main, settings, since="10m", severity="critical")
    assert code == 0 and out == "" and "0 alerts" in err  # nothing recent that severe
    code, out, err = _run(cli_store.query_main, settings, "SELECT * FROM events WHERE 0")
    assert code == 0 and out == "" and "0 rows" in err
    _, out, _ = _run(cli_store.alerts_main, settings, since="1h", severity="high")
    assert [line.split()[3] for line in out.splitlines()[2:]] == ["recent-high", "old-critical"]
    _, out, _ = _run(cli_store.alerts_main, settings, since="1h", as_json=True, limit=1)
    [alert] = [json.loads(x) for x in out.splitlines()]
    assert alert["rule_id"] == "recent-high" and alert["file_path"] == ODD.decode("utf-8", "backslashreplace")
    assert {"alert_id", "event_id", "message", "process_exe", "trace_id"} <= set(alert)
    code, out, _ = _run(cli_store.query_main, settings, "SELECT count() AS n FROM alerts", fmt="json", raw=True)
    assert json.loads(out)["n"] in (3, 4)  # --raw shows stored copies until a merge collapses them


def test_query_and_alerts_open_the_embedded_store_when_no_sink_runs(store_settings):
    with pytest.raises(FileNotFoundError, match="fimstream up"):
        cli_store.connect(store_settings)
    _fill(store_settings)
    _checks(store_settings, "embedded store")
    code, _, _ = _run(cli_store.query_main, store_settings, "OPTIMIZE TABLE alerts FINAL", write=True)
    assert code == 0


def test_query_and_alerts_go_through_the_running_sinks_endpoint(store_settings):
    _fill(store_settings)
    token = store.query_token(store_settings, create=True)
    ep = QueryEndpoint(store_settings.chdb_path, store_settings.query_listen, write_token=token).start()
    try:
        _checks(store_settings, "sink endpoint")
        code, _, _ = _run(cli_store.query_main, store_settings, "OPTIMIZE TABLE alerts FINAL", write=True)
        assert code == 0
        _, out, _ = _run(cli_store.query_main, store_settings, "SELECT count() AS n FROM alerts", fmt="json", raw=True)
        assert json.loads(out)["n"] == 3  # merged: the replayed copy is gone from storage too
    finally:
        ep.stop()


def test_since_parsing():
    assert [cli_store.parse_since(s) for s in ("30s", "10m", "2h", "1d", "1w", "45")] == [30, 600, 7200, 86400, 604800, 45]
    with pytest.raises(ValueError):
        cli_store.parse_since("ten minutes")
