"""Building event records (dicts in the Avro schemas' shape) with every default filled in.

Used wherever events are made outside the kernel path: synthetic loss/enforcement events, rule
fixtures, tests and benchmarks.
"""
from __future__ import annotations

import copy
import os
import socket
import time
from functools import lru_cache

from fimstream.schemas.codec import EventIds, _schema_sources

_ids = EventIds()


def _default_for(ftype):
    if isinstance(ftype, list):  # union: Avro defaults are for the first branch
        return None if ftype[0] == "null" else _default_for(ftype[0])
    if isinstance(ftype, dict):
        t = ftype["type"]
        if t == "record":
            return record_defaults(ftype)
        if t == "array":
            return []
        if t == "map":
            return {}
        if t == "enum":
            return ftype.get("default", ftype["symbols"][0])
        if t == "fixed":
            return bytes(ftype["size"])
        return _default_for(t)
    return {"string": "", "bytes": b"", "long": 0, "int": 0, "boolean": False, "double": 0.0,
            "float": 0.0, "null": None}.get(ftype)


def record_defaults(schema: dict) -> dict:
    out = {}
    for f in schema["fields"]:
        ftype = f["type"]
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            out[f["name"]] = record_defaults(ftype)  # nested record: its own fields' defaults
        elif "default" in f:
            value = copy.deepcopy(f["default"])
            out[f["name"]] = value.encode("latin-1") if _is_bytes(ftype) and isinstance(value, str) else value
        else:
            out[f["name"]] = _default_for(ftype)
    return out


def _is_bytes(ftype) -> bool:
    return ftype == "bytes" or (isinstance(ftype, dict) and ftype.get("type") == "bytes")


@lru_cache(maxsize=None)
def _templates() -> dict[str, dict]:
    src = _schema_sources()
    return {"raw": record_defaults(src["raw"]), "enrichment": record_defaults(src["enrichment"])}


def file_record(path: bytes | str, **fields) -> dict:
    schema = next(f for f in _schema_sources()["raw"]["fields"] if f["name"] == "file")["type"][1]
    rec = record_defaults(schema)
    rec["path"] = path.encode() if isinstance(path, str) else path
    rec.update(fields)
    return rec


def raw_event(event_type: str = "open", path: bytes | str | None = None, **fields) -> dict:
    """A complete RawEvent dict. `process` may be a partial dict merged over the defaults."""
    ev = copy.deepcopy(_templates()["raw"])
    ev["event_id"] = _ids.next()
    ev["time_ns"] = time.time_ns()
    ev["event_type"] = event_type
    ev["host"] = socket.gethostname()
    proc = ev["process"]
    proc.update(pid=os.getpid(), tid=os.getpid(), ppid=os.getppid(), comm="python3", exe=b"/usr/bin/python3")
    proc.update(fields.pop("process", {}))
    if path is not None:
        ev["file"] = file_record(path)
    for key in ("file", "target"):
        if isinstance(fields.get(key), (str, bytes)):
            fields[key] = file_record(fields[key])
    ev.update(fields)
    return ev


def enriched_event(event_type: str = "open", path: bytes | str | None = None, **fields) -> dict:
    """A complete EnrichedEvent dict (raw fields followed by enrichment fields)."""
    enrichment = copy.deepcopy(_templates()["enrichment"])
    k8s = fields.pop("k8s", {})
    for key in list(fields):
        if key in enrichment:
            enrichment[key] = fields.pop(key)
    enrichment["k8s"].update(k8s)
    ev = raw_event(event_type, path, **fields)
    ev.update(enrichment)
    return ev
