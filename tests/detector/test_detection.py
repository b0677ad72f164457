"""Detection.evaluate end to end: the default pack's correlations raise alerts from decoded events, signal-only
rules stay silent, and a rule reload keeps (or resets) correlation state as documented."""
from __future__ import annotations

from pathlib import Path

import pytest

from fimstream.detector.service import Detection
from fimstream.rules import load_rules, load_rules_text, make_event

PACK = Path(__file__).resolve().parents[2] / "rules"
S = 1_000_000_000
T0 = 1_700_000_000 * S


@pytest.fixture(scope="module")
def pack():
    return load_rules(PACK)


def ev(t: float, **spec) -> dict:
    spec.setdefault("process", {"pid": 4242, "exe": "/usr/bin/curl", "comm": "curl"})
    return make_event(dict(spec, time_ns=T0 + int(t * S)))


def ids(alerts) -> list[str]:
    return [a["rule_id"] for a in alerts]


def test_dropper_is_one_exec_of_a_freshly_changed_file(pack):
    d = Detection(pack)
    run = ev(30, event_type="exec", file={"path": "/tmp/.x", "ctime_ns": T0}, container_id="4f1c2e",
             process={"pid": 4244, "exe": "/tmp/.x", "comm": ".x"})
    alerts = d.evaluate([run])
    assert sorted(ids(alerts)) == ["dropper_executed", "exec_from_tmp"]
    [dropper] = [a for a in alerts if a["rule_id"] == "dropper_executed"]
    assert dropper["severity"] == "high" and dropper["tags"] == ["T1105", "T1204.002"]
    assert dropper["event"]["event_id"] == run["event_id"] and dropper["related_event_ids"] == []
    assert dropper["message"].startswith("A file under /tmp") and dropper["rule_version"] == pack.version[:12]
    # changed 3 minutes before the exec, or times unknown: only the location rule
    stale = ev(180, event_type="exec", file={"path": "/dev/shm/p", "ctime_ns": T0})
    unknown = ev(5, event_type="exec", file="/dev/shm/p")
    assert ids(d.evaluate([stale, unknown])) == ["exec_from_dev_shm", "exec_from_dev_shm"]


def test_sequence_alerts_once_with_the_first_step_as_related_event():
    d = Detection(ruleset())
    write = ev(0, event_type="create", file="/tmp/.x", container_id="4f1c2e")
    assert d.evaluate([write]) == []  # a is signal-only: no alert of its own
    other = ev(10, event_type="exec", file="/tmp/.other", container_id="4f1c2e")
    run = ev(30, event_type="exec", file="/tmp/.x", container_id="4f1c2e")
    alerts = d.evaluate([other, run])
    assert ids(alerts) == ["b", "b", "seq", "count"]  # count: two b in a minute
    seq = alerts[2]
    assert seq["event"]["event_id"] == run["event_id"] and seq["related_event_ids"] == [write["event_id"]]
    assert "seq" not in ids(d.evaluate([ev(40, event_type="exec", file="/tmp/.x", container_id="4f1c2e")]))


def test_sequence_needs_the_same_container_and_the_window():
    d = Detection(ruleset())
    d.evaluate([ev(0, event_type="create", file="/tmp/.x", container_id="aaa"),
                ev(0, event_type="create", file="/tmp/p")])
    assert "seq" not in ids(d.evaluate([ev(5, event_type="exec", file="/tmp/.x", container_id="bbb")]))
    assert "seq" not in ids(d.evaluate([ev(121, event_type="exec", file="/tmp/p")]))
    d.evaluate([ev(200, event_type="create", file="/tmp/p")])
    assert ids(d.evaluate([ev(300, event_type="exec", file="/tmp/p")])) == ["b", "seq"]


def test_mass_log_deletion_counts_per_process(pack):
    d = Detection(pack)
    rm = {"pid": 4242, "exe": "/usr/bin/rm", "comm": "rm"}
    batch = [ev(i, event_type="unlink", file=f"/var/log/app/{i}.log", process=rm) for i in range(19)]
    batch.append(ev(19, event_type="unlink", file="/var/log/other.log", process=dict(rm, pid=999)))
    # 19 + 1 in two processes: no mass deletion yet, but 20 x 5 points of risk on this host
    assert ids(d.evaluate(batch)) == ["log_deleted"] * 20 + ["container_risk"]
    alerts = d.evaluate([ev(20, event_type="truncate", file="/var/log/syslog", process=rm)])
    assert ids(alerts) == ["log_truncated", "mass_log_deletion"]
    assert len(alerts[1]["related_event_ids"]) == 19


def test_container_risk_sums_rule_scores_per_container(pack):
    d = Detection(pack)
    shm = ev(0, event_type="exec", file="/dev/shm/.k", container_id="c1")  # exec_from_dev_shm: 40
    shell_conn = ev(60, event_type="connect", container_id="c1", process={"exe": "/bin/bash", "comm": "bash"},
                    net={"remote_addr": "203.0.113.9", "remote_port": 4444})  # shell_outbound_connection: 40
    elsewhere = ev(70, event_type="exec", file="/tmp/.k2", container_id="c2")  # 20, another container
    assert "container_risk" not in ids(d.evaluate([shm, shell_conn, elsewhere]))
    alerts = d.evaluate([ev(120, event_type="exec", file="/tmp/.k2", container_id="c1")])  # exec_from_tmp: 20
    assert ids(alerts) == ["exec_from_tmp", "container_risk"]
    assert alerts[1]["score"] == 100.0 and set(alerts[1]["related_event_ids"]) == {shm["event_id"],
                                                                                   shell_conn["event_id"]}


SEQ = '''rules:
  - id: a
    expression: create.file.path =~ "/tmp/**"
    actions: [signal]
  - id: b
    expression: exec.file.path =~ "/tmp/**"
correlations:
  - id: seq
    sequence: [a, b]
    same: [file.path]
    within: {within}
    severity: {severity}
  - id: count
    threshold: {{rule: b, count: 2}}
    within: 1m
    by: {by}
'''


def ruleset(within="2m", severity="high", by="container"):
    return load_rules_text(SEQ.format(within=within, severity=severity, by=by), "seq.yaml")


def test_reload_keeps_state_of_unchanged_correlations_and_resets_changed_ones():
    d = Detection(ruleset())
    d.evaluate([ev(0, event_type="create", file="/tmp/x"), ev(1, event_type="exec", file="/tmp/y")])
    # severity and window changed (seq keeps its state), threshold's `by` changed (count starts over)
    d.swap_rules(ruleset(within="5m", severity="critical", by="host"))
    assert d.correlator.kept_state == ["seq"]
    alerts = d.evaluate([ev(200, event_type="exec", file="/tmp/x")])
    assert ids(alerts) == ["b", "seq"] and alerts[1]["severity"] == "critical"  # new window (5m) and severity
    assert "count" not in ids(alerts)  # only one b since the reload
    assert ids(d.evaluate([ev(201, event_type="exec", file="/tmp/z")])) == ["b", "count"]
    assert d.correlator.stats.fired == 2  # stats carry over for the health endpoint


def test_reload_that_removes_or_redefines_a_correlation_starts_it_over():
    d = Detection(ruleset())
    d.evaluate([ev(0, event_type="create", file="/tmp/x")])
    d.swap_rules(load_rules_text(SEQ.format(within="2m", severity="high", by="container")
                                 .replace("same: [file.path]", "same: [file.name]"), "seq.yaml"))
    assert d.correlator.kept_state == ["count"]
    assert ids(d.evaluate([ev(1, event_type="exec", file="/tmp/x")])) == ["b"]  # the create was forgotten
    d.swap_rules(load_rules_text(SEQ.split("correlations:")[0], "seq.yaml"))
    assert d.correlator.correlations == [] and d.rules.correlations == ()


def test_alert_ids_are_stable_across_detectors():
    """A replayed event raises the same alert id in a new detector (ClickHouse and SIEMs drop the copy)."""
    from pathlib import Path

    from fimstream.detector.service import Detection
    from fimstream.events import enriched_event
    from fimstream.rules import load_rules
    rules = load_rules(Path(__file__).resolve().parents[2] / "rules")
    ev = enriched_event("create", "/etc/cron.d/x", process={"exe": b"/usr/bin/python3", "comm": "python3"})
    first = {a["rule_id"]: a["alert_id"] for a in Detection(rules).evaluate([ev])}
    again = {a["rule_id"]: a["alert_id"] for a in Detection(rules).evaluate([ev])}
    assert first and first == again
    assert len(set(first.values())) == len(first)  # one id per rule
