"""`fimstream status`: is every stage running, and is the pipeline flowing?

A stage is running when its process is alive and its heartbeat (<state_dir>/health/<stage>.json) is fresh.
It is flowing unless it has input waiting (consumer lag) and has not made progress for STUCK_AFTER
seconds. Exit code 0 only when every stage is running and flowing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from fimstream.health import STALE_AFTER, pid_alive, read_all
from fimstream.service import STAGES
from fimstream.supervisor import UP_FILE

STUCK_AFTER = 30.0


def check(state_dir: Path, stages=STAGES) -> tuple[bool, list[dict]]:
    now = time.time()
    health = read_all(state_dir)
    up_path = state_dir / UP_FILE
    up = json.loads(up_path.read_text()) if up_path.exists() else {}
    rows = []
    ok = True
    if up.get("embedded_broker"):
        alive = bool(up.get("broker_pid")) and pid_alive(up["broker_pid"])
        rows.append({"stage": "broker", "state": "running" if alive else "down",
                     "detail": up.get("kafka_bootstrap", "")})
        ok &= alive
    for stage in stages:
        h = health.get(stage)
        row = {"stage": stage, "state": "running", "detail": ""}
        if h is None:
            row.update(state="missing", detail="no heartbeat yet (not started?)")
        elif not pid_alive(h["pid"]) or h.get("status") == "stopped":
            row.update(state="down", detail=f"pid {h['pid']} is not running")
        elif now - h["time"] > STALE_AFTER:
            row.update(state="stale", detail=f"last heartbeat {now - h['time']:.0f}s ago")
        elif h.get("status") != "running":
            row.update(state=h.get("status", "?"), detail="starting up")
        else:
            c = h.get("counters", {})
            lag = c.get("lag", 0)
            last = c.get("last_message_time") or h.get("info", {}).get("last_message_time") or h.get("started", now)
            if lag and now - last > STUCK_AFTER:
                row.update(state="stuck", detail=f"{lag} messages waiting, no progress for {now - last:.0f}s")
            else:
                row["detail"] = summary(stage, c)
        ok &= row["state"] == "running"
        rows.append(row)
    return ok, rows


def summary(stage: str, c: dict) -> str:
    keys = {"collector": ("events_read", "published", "dropped", "ringbuf_lost"),
            "enricher": ("events", "dead_letters", "status_unresolved"),
            "detector": ("events", "alerts", "dead_letters", "rules"),
            "sink": ("rows_events", "rows_alerts", "dead_letters", "insert_retries")}.get(stage, ())
    parts = [f"{k}={c[k]}" for k in keys if k in c]
    if "lag" in c:
        parts.append(f"lag={c['lag']}")
    return " ".join(parts)


def collector_info(state_dir: Path, key: str) -> str:
    """One item of what the collector reports about itself; "" when no collector reports it."""
    h = read_all(state_dir).get("collector") or {}
    return str((h.get("info") or {}).get(key, ""))


def enforcement(state_dir: Path) -> str:
    """The collector's enforcement backends, e.g. "kill=bpf_send_signal deny=fanotify (bpf-lsm unavailable:
    EPERM)"."""
    return collector_info(state_dir, "enforcement_summary")


def main(state_dir: Path, as_json: bool = False) -> int:
    ok, rows = check(state_dir)
    enforcing = enforcement(state_dir)
    reads = collector_info(state_dir, "kernel_reads")  # how the eBPF programs read kernel memory
    if as_json:
        print(json.dumps({"ok": ok, "stages": rows, "enforcement": enforcing, "kernel_reads": reads}, indent=2))
    else:
        for r in rows:
            print(f"{r['stage']:<10} {r['state']:<8} {r['detail']}")
        if enforcing:
            print(f"enforcement: {enforcing}")
        if reads:
            print(f"kernel reads: {reads}")
        print("pipeline: " + ("flowing" if ok else "NOT healthy"))
    return 0 if ok else 1
