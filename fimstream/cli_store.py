"""`fimstream query` and `fimstream alerts`: SQL on the audit store, from a terminal.

Where the store is reached (`connect`):
- embedded store, pipeline running: the sink's ClickHouse-HTTP endpoint on `settings.query_listen`
  (chDB lets only the sink's process open the data path);
- embedded store, pipeline stopped: the chDB data path directly;
- `clickhouse_url` set: that server.

Reads use the setting `final=1`, so rows replayed by the at-least-once pipeline are shown once
(`--raw` shows the stored copies, see docs/store.md). Statements other than reads need `--write`
(the endpoint then sends the write token from <state_dir>/query-token). Raw bytes (paths, exe, args) are
printed as UTF-8 with undecodable bytes as \\xNN.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
import urllib.request
import uuid
from typing import Any, Callable, TextIO

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from fimstream import store
from fimstream.config import Settings
from fimstream.schemas.codec import text

TRAILING_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.I)
READ_STATEMENT = re.compile(r"^\s*(\(|SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.I)
FORMATS = ("table", "json", "csv", "tsv")
SINCE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ALERT_COLUMNS = ("time", "severity", "rule_id", "host", "event_type", "file_path", "process_exe", "process_pid",
                 "k8s_namespace", "k8s_pod", "container_id", "message")
MAX_CELL = 80  # table mode truncates longer cells (json/csv never do)


# ------------------------------------------------------------------------------------------- connect
def endpoint_address(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.query_listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), int(port)


def endpoint_up(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=timeout) as r:
            return r.status == 200 and r.read().startswith(b"Ok.")
    except OSError:
        return False


def _pipeline_running(settings: Settings) -> bool:
    from fimstream.health import pid_alive
    from fimstream.supervisor import UP_FILE
    try:
        up = json.loads((settings.state_dir / UP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(up.get("pid")) and pid_alive(up["pid"])


def connect(settings: Settings, write: bool = False) -> tuple[Client, str]:
    """A client for the store and a description of where it is."""
    if not settings.embedded_store:
        return store.open_client(settings), f"server {store.redact_url(settings.store_url)}"
    host, port = endpoint_address(settings)
    if endpoint_up(host, port):
        password = ""
        if write:
            password = store.query_token(settings) or ""
            if not password:
                raise PermissionError(f"--write needs the token in {settings.state_dir / 'query-token'} "
                                      "(readable by the user running the pipeline)")
        client = clickhouse_connect.get_client(host=host, port=port, username="default", password=password,
                                               compress=False, autogenerate_session_id=False,
                                               connect_timeout=5, send_receive_timeout=300)
        return client, f"sink endpoint http://{host}:{port}"
    if _pipeline_running(settings):
        # opening chDB here would take the store's lock from the sink while it restarts
        raise ConnectionError(f"the pipeline is running but its sink does not answer on {settings.query_listen} "
                              "(restarting?); try again in a few seconds, or see `fimstream status`")
    path = settings.chdb_path
    if not (path / "metadata").exists():
        raise FileNotFoundError(f"no store at {path} and no sink answering on {settings.query_listen}: "
                                "start the pipeline (`fimstream up`) first")
    try:
        return store.open_client(settings), f"embedded store {path}"
    except Exception as e:
        raise ConnectionError(f"cannot open the embedded store at {path} ({str(e).splitlines()[0][:200]}); "
                              f"another process holds it but no endpoint answers on {settings.query_listen}"
                              ) from None


# ------------------------------------------------------------------------------------------ rendering
def _ns_time(ticks: int, scale: int) -> str:
    seconds, frac = divmod(ticks, 10 ** scale)
    base = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{base}.{frac:0{scale}d}" if scale else base


def _converters(result) -> list[Callable[[Any], Any]]:
    """Per column: value -> JSON-ready value (bytes as text with \\xNN, DateTime64 ticks as UTC text)."""
    out = []
    for ch_type in result.column_types:
        scale = getattr(ch_type, "scale", None)
        if ch_type.base_type == "DateTime64" and scale is not None:
            out.append(lambda v, s=scale: None if v is None else _ns_time(v, s))
        else:
            out.append(_plain)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return text(bytes(v))
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(_plain(k)): _plain(val) for k, val in v.items()}
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, float) and v != v:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def _cell(v: Any) -> str:
    """One table cell on one line: control characters shown as escapes, like the \\xNN of raw bytes."""
    if v is None:
        return "NULL"
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s.translate(_CONTROL) if isinstance(v, str) else s


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def write_rows(out: TextIO, names: list[str], rows: list[list[Any]], fmt: str, max_cell: int = MAX_CELL) -> None:
    """Rows already converted by _converters (JSON-ready values)."""
    if fmt == "json":  # JSON lines: one object per row, pipes into jq
        for row in rows:
            out.write(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n")
    elif fmt in ("csv", "tsv"):
        w = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        w.writerow(names)
        for row in rows:
            w.writerow(["" if v is None else v if isinstance(v, (str, int, float)) else json.dumps(v, ensure_ascii=False)
                        for v in row])
    else:
        cells = [[_cell(v) for v in row] for row in rows]
        cells = [[c if len(c) <= max_cell else c[: max_cell - 1] + "…" for c in row] for row in cells]
        widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
        numeric = [all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
                   for i in range(len(names))]

        def line(values: list[str]) -> str:
            return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

        out.write(line(names) + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write(line(row) + "\n")


def run_query(client: Client, sql: str, parameters: dict | None = None, raw: bool = False,
              readonly: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Column names and JSON-ready rows of a read statement."""
    settings = {} if raw else {"final": "1"}
    if readonly:
        settings["readonly"] = "2"
    result = client.query(sql, parameters=parameters, settings=settings,
                          query_formats={"String": "bytes", "FixedString": "bytes", "DateTime64": "int"})
    conv = _converters(result)
    rows = [[c(v) for c, v in zip(conv, row)] for row in result.result_rows]
    return list(result.column_names), rows


# ------------------------------------------------------------------------------------------ commands
def query_main(settings: Settings, sql: str, fmt: str = "table", write: bool = False, raw: bool = False,
               out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`fimstream query [--format table|json|csv|tsv] [--write] [--raw] "SQL"`; returns the exit code."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
    if not write and not READ_STATEMENT.match(sql):
        err.write("fimstream: only reads (SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN) without --write\n")
        return 2
    try:
        client, where = connect(settings, write=write)
    except PermissionError as e:
        err.write(f"fimstream: {e}\n")
        return 2
    direct = where.startswith("embedded")
    t0 = time.monotonic()
    try:
        if READ_STATEMENT.match(sql) and TRAILING_FORMAT.search(sql):
            # the statement names its own output format: ClickHouse's bytes, as they come
            settings = {} if raw else {"final": "1"}
            if direct and not write:
                settings["readonly"] = "2"
            out.write(client.raw_query(sql, settings=settings).decode("utf-8", "surrogateescape"))
        elif READ_STATEMENT.match(sql):
            names, rows = run_query(client, sql, raw=raw, readonly=direct and not write)
            if names:  # an empty result carries no columns over Native
                write_rows(out, names, rows, fmt)
            if fmt == "table":
                err.write(f"{len(rows)} row{'s' if len(rows) != 1 else ''} in {time.monotonic() - t0:.3f}s ({where})\n")
        else:
            result = client.command(sql)
            if result not in (None, ""):
                out.write(f"{result}\n" if not isinstance(result, (list, tuple)) else "\t".join(map(str, result)) + "\n")
    except clickhouse_connect.driver.exceptions.DatabaseError as e:
        err.write(f"fimstream: {_server_message(e)}\n")
        return 1
    finally:
        with store.engine_lock(client):
            client.close()
    return 0


def parse_since(since: str) -> int:
    m = SINCE.match(since)
    if not m:
        raise ValueError(f"--since {since!r}: expected a number with s, m, h, d or w (e.g. 10m)")
    return int(m.group(1)) * UNIT_SECONDS[m.group(2)]


def alerts_sql(since_s: int, severity: str | None, limit: int, all_columns: bool) -> tuple[str, dict]:
    params: dict[str, Any] = {"since": since_s, "limit": limit}
    where = "time >= now64(9) - toIntervalSecond({since:UInt64})"
    if severity:
        if severity not in store.SEVERITIES:
            raise ValueError(f"--severity must be one of {', '.join(store.SEVERITIES)}")
        where += " AND severity_level >= {level:UInt8}"
        params["level"] = store.SEVERITIES.index(severity) + 1
    cols = "*" if all_columns else ", ".join(ALERT_COLUMNS)
    return f"SELECT {cols} FROM alerts WHERE {where} ORDER BY time DESC LIMIT {{limit:UInt32}}", params


def alerts_main(settings: Settings, since: str = "10m", as_json: bool = False, severity: str | None = None,
                limit: int = 100, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`fimstream alerts [--since 10m] [--json] [--severity X] [--limit N]`: newest first; --severity X
    shows X and more severe. --json prints every column of each alert, one JSON object per line."""
    sql, params = alerts_sql(parse_since(since), severity, limit, all_columns=as_json)
    client, where = connect(settings)
    try:
        names, rows = run_query(client, sql, parameters=params, readonly=where.startswith("embedded"))
    except clickhouse_connect.driver.exceptions.DatabaseError as e:
        err.write(f"fimstream: {_server_message(e)}\n")
        return 1
    finally:
        with store.engine_lock(client):
            client.close()
    if as_json:
        write_rows(out, names, rows, "json")
    else:
        if rows:
            ti = names.index("time")
            for row in rows:
                row[ti] = row[ti][:23] if row[ti] else row[ti]  # ms are enough on a terminal
            write_rows(out, names, rows, "table", max_cell=100)
        err.write(f"{len(rows)} alert{'s' if len(rows) != 1 else ''} in the last {since.strip()} ({where})\n")
    return 0


def _server_message(e: Exception) -> str:
    """The ClickHouse error text without clickhouse-connect's wrapping."""
    s = str(e)
    idx = s.find("Code: ")
    s = s[idx:] if idx >= 0 else s
    return re.sub(r"\s*\(for url [^)]*\)\s*$", "", s).strip()


# ------------------------------------------------------------------------------------------ argparse
def add_subparsers(subparsers, add_common: Callable[[argparse.ArgumentParser], None],
                   settings_from: Callable[[argparse.Namespace], Settings]) -> None:
    """Register `query` and `alerts` (cli.py passes its _common and settings_from)."""
    p = subparsers.add_parser("query", help="run SQL on the audit store (tables events, alerts)")
    add_common(p)
    p.add_argument("sql", help='e.g. "SELECT time, event_type, file_path FROM events ORDER BY time DESC LIMIT 10"')
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), json (one object per "
                   "line), csv or tsv")
    p.add_argument("--write", action="store_true", help="allow statements other than reads (DDL, OPTIMIZE, ...)")
    p.add_argument("--raw", action="store_true", help="show stored copies of replayed rows (no final=1)")
    p.set_defaults(func=lambda a: query_main(settings_from(a), a.sql, a.format, a.write, a.raw))

    p = subparsers.add_parser("alerts", help="recent alerts, newest first")
    add_common(p)
    p.add_argument("--since", default="10m", help="how far back: 30s, 10m, 2h, 1d, 1w (default 10m)")
    p.add_argument("--json", action="store_true", help="every column, one JSON object per line")
    p.add_argument("--severity", choices=store.SEVERITIES, help="this severity and above")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=lambda a: alerts_main(settings_from(a), a.since, a.json, a.severity, a.limit))
