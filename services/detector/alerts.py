"""Alert records (schemas/alert.avsc) and their SIEM JSON form."""
from __future__ import annotations

import hashlib
import json
import time

from fimstream.schemas.codec import id_hex, jsonable, text

SEVERITIES = ("info", "low", "medium", "high", "critical")


def alert_id(rule_id: str, event_id: bytes) -> bytes:
    """16 bytes derived from (rule, event): a detector that replays an event after a restart raises the
    same alert id, so ClickHouse and SIEMs can drop the copy."""
    return hashlib.blake2b(rule_id.encode() + b"\0" + event_id, digest_size=16).digest()


def describe(event: dict) -> str:
    """One line saying what happened, for the alert message."""
    proc = event["process"]
    what = event["event_type"]
    f = event.get("file")
    t = event.get("target")
    obj = text(f["path"]) if f else ""
    if t and t["path"]:
        obj += f" -> {text(t['path'])}"
    net = event.get("net")
    if net and not obj:
        obj = f"{net['remote_addr']}:{net['remote_port']}"
    who = f"{text(proc['exe']) or proc['comm']} (pid {proc['pid']}, uid {proc['uid']})"
    where = event.get("container_id") and f" in container {event['container_id'][:12]}" or ""
    k8s = event.get("k8s") or {}
    if k8s.get("pod"):
        where = f" in pod {k8s['namespace']}/{k8s['pod']}"
    return f"{what} {obj} by {who}{where}".replace("  ", " ")


def make_alert(event: dict, rule_id: str, severity: str, title: str, tags=(), actions=(),
               score: float = 0.0, related: list[bytes] | None = None, rule_version: str = "") -> dict:
    return {
        "alert_id": alert_id(rule_id, event["event_id"]),
        "time_ns": time.time_ns(),
        "rule_id": rule_id,
        "rule_version": rule_version,
        "severity": severity if severity in SEVERITIES else "info",
        "message": f"{title}: {describe(event)}" if title else describe(event),
        "tags": list(tags),
        "actions": list(actions),
        "score": float(score),
        "event": event,
        "related_event_ids": list(related or ()),
    }


def alert_json(alert: dict) -> bytes:
    """The SIEM form: flat, self-describing, ids as UUID text, paths as text with \\xNN escapes."""
    ev = alert["event"]
    doc = {
        "alert_id": id_hex(alert["alert_id"]),
        "time": _iso(alert["time_ns"]),
        "rule_id": alert["rule_id"],
        "severity": alert["severity"],
        "message": alert["message"],
        "tags": alert["tags"],
        "actions": alert["actions"],
        "score": alert["score"],
        "event_id": id_hex(ev["event_id"]),
        "event_time": _iso(ev["time_ns"]),
        "related_event_ids": [id_hex(i) for i in alert["related_event_ids"]],
        "event": jsonable(ev),
    }
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


def _iso(ns: int) -> str:
    secs, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem:09d}Z"
