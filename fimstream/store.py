"""The audit store: ClickHouse tables `events` and `alerts`, written by the sink, read by `fimstream query`.

One code path for both deployments: `open_client(settings)` returns a clickhouse-connect client for
`chdb://PATH` (embedded chDB, in this process) or `http(s)://user:pass@host:port/db` (a server).

Tables (created idempotently by `ensure_schema`, new columns added by ALTER ... ADD COLUMN IF NOT EXISTS):
- ReplacingMergeTree, partitioned by day (`toYYYYMMDD(time)`), sorted for audit queries by
  host / type / hour / path. The pipeline is at-least-once, so a replayed Kafka message inserts rows again;
  the sorting key ends with the event (alert) id, so copies of one event collapse into one row when
  ClickHouse merges parts. Until then a query sees them unless it reads with FINAL (or the setting
  `final=1`, which `fimstream query` and `fimstream alerts` send). See docs/store.md.
- Column types cover the Avro types exactly (Avro int -> Int32, long -> Int64, bytes -> String) so every
  record the codec decodes can be inserted: a value out of range would block the sink on one batch forever.
- Paths, exe, args and cgroup are raw kernel bytes: String columns hold them byte for byte.

Rows are built column by column from decoded Avro records (`EVENTS.arrow(records, trace_ids)`) and
inserted as Arrow (bench/bench_sink.py measures the alternatives).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from fimstream.config import Settings

log = logging.getLogger(__name__)

# chDB hosts one engine per process; the sink's inserts and the query endpoint's queries take turns on it.
ENGINE_LOCK = threading.RLock()

SEVERITIES = ("info", "low", "medium", "high", "critical")  # schemas/alert.avsc order = increasing


# ------------------------------------------------------------------------------------------ columns
@dataclass(frozen=True)
class Column:
    name: str
    ch_type: str
    arrow: pa.DataType
    build: Callable[["_Parts"], list | pa.Array]  # the column's values for a batch


_NO_FILE = {"path": b"", "path_flags": 0, "dev": 0, "ino": 0, "nlink": 0, "mode": 0, "uid": 0, "gid": 0,
            "mtime_ns": 0, "ctime_ns": 0}
_NO_NET = {"family": 0, "protocol": 0, "local_addr": "", "local_port": 0, "remote_addr": "", "remote_port": 0}
_CRED_FIELDS = ("old_uid", "old_euid", "old_gid", "old_egid", "new_uid", "new_euid", "new_gid", "new_egid",
                "old_caps", "new_caps")
_NO_CRED = dict.fromkeys(_CRED_FIELDS)  # NULLs: "no credential change", unlike uid 0


class _Parts:
    """The sub-records of a batch of decoded EnrichedEvents, split once; each column is then one
    C-level map(itemgetter) over a list (a few tens of ns per value)."""

    def __init__(self, records: Sequence[dict], trace_ids: Sequence[str]):
        self.top = records
        self.process = [r["process"] for r in records]
        self.file = [r["file"] or _NO_FILE for r in records]
        self.target = [r["target"] or _NO_FILE for r in records]
        self.net = [r["net"] or _NO_NET for r in records]
        self.cred = [r["cred"] or _NO_CRED for r in records]
        self.k8s = [r["k8s"] for r in records]
        self.trace_ids = trace_ids

    @functools.cached_property
    def ancestors(self) -> tuple[pa.Array, list[dict]]:
        offsets, flat = [0], []
        for proc in self.process:
            flat.extend(proc["ancestors"])
            offsets.append(len(flat))
        return pa.array(offsets, pa.int32()), flat


def _get(part: str, key: str) -> Callable[[_Parts], list]:
    getter = itemgetter(key)
    return lambda p: list(map(getter, getattr(p, part)))


def _col(name: str, ch_type: str, part: str, key: str | None = None) -> Column:
    return Column(name, ch_type, _ARROW[ch_type], _get(part, key or name))


_MAP = pa.map_(pa.string(), pa.string())
_ARROW = {
    "Int32": pa.int32(), "Int64": pa.int64(), "Float64": pa.float64(), "Bool": pa.bool_(),
    "String": pa.binary(), "LowCardinality(String)": pa.string(), "UUID": pa.binary(16),
    "DateTime64(9, 'UTC')": pa.timestamp("ns"), "Nullable(Int64)": pa.int64(),
    "Map(String, String)": _MAP, "Array(String)": pa.list_(pa.binary()),
    "Array(LowCardinality(String))": pa.list_(pa.string()), "Array(Int64)": pa.list_(pa.int64()),
    "Array(UUID)": pa.list_(pa.binary(16)),
}
LC = "LowCardinality(String)"
TIME = "DateTime64(9, 'UTC')"


def _file_columns(prefix: str, part: str) -> list[Column]:
    return [_col(f"{prefix}_path", "String", part, "path"), _col(f"{prefix}_path_flags", "Int32", part, "path_flags"),
            _col(f"{prefix}_dev", "Int64", part, "dev"), _col(f"{prefix}_ino", "Int64", part, "ino"),
            _col(f"{prefix}_nlink", "Int64", part, "nlink"), _col(f"{prefix}_mode", "Int32", part, "mode"),
            _col(f"{prefix}_uid", "Int64", part, "uid"), _col(f"{prefix}_gid", "Int64", part, "gid"),
            _col(f"{prefix}_mtime_ns", "Int64", part, "mtime_ns"), _col(f"{prefix}_ctime_ns", "Int64", part, "ctime_ns")]


def _ancestors(key: str, value_type: pa.DataType) -> Callable[[_Parts], pa.Array]:
    """One Array column from a field of the ancestors: flattened once per batch, then like any column."""
    getter = itemgetter(key)

    def build(p: _Parts) -> pa.Array:
        offsets, flat = p.ancestors
        return pa.ListArray.from_arrays(offsets, pa.array(list(map(getter, flat)), value_type))
    return build


def _event_columns() -> list[Column]:
    """Every field of an EnrichedEvent (nested records flattened with their prefix), then trace_id."""
    cols = [
        _col("time", TIME, "top", "time_ns"),
        _col("event_id", "UUID", "top"),
        _col("host", LC, "top"),
        _col("event_type", LC, "top"),
        _col("syscall", LC, "top"),
        _col("retval", "Int64", "top"),
        *_file_columns("file", "file"),
        *_file_columns("target", "target"),
        _col("flags", "Int64", "top"),
        _col("mode", "Int64", "top"),
        _col("owner_uid", "Int64", "top"),
        _col("owner_gid", "Int64", "top"),
    ]
    for key in ("pid", "tid", "ppid", "start_time_ns", "uid", "gid", "euid", "egid", "auid", "session_id"):
        cols.append(_col(f"process_{key}", "Int64", "process", key))
    cols += [
        _col("process_comm", LC, "process", "comm"),
        _col("process_exe", "String", "process", "exe"),
        _col("process_exe_ino", "Int64", "process", "exe_ino"),
        _col("process_exe_dev", "Int64", "process", "exe_dev"),
        _col("process_args", "Array(String)", "process", "args"),
        _col("process_args_truncated", "Bool", "process", "args_truncated"),
        _col("process_cgroup_id", "Int64", "process", "cgroup_id"),
        _col("process_cgroup", "String", "process", "cgroup"),
        Column("process_ancestors", "Array(String)", _ARROW["Array(String)"], _ancestors("exe", pa.binary())),
        Column("process_ancestor_pids", "Array(Int64)", _ARROW["Array(Int64)"], _ancestors("pid", pa.int64())),
        Column("process_ancestor_comms", "Array(LowCardinality(String))",
               _ARROW["Array(LowCardinality(String))"], _ancestors("comm", pa.string())),
        _col("container_id", "String", "top"),
        _col("container_runtime", LC, "top"),
        _col("enrich_status", LC, "top"),
        _col("k8s_namespace", LC, "k8s", "namespace"),
        _col("k8s_pod", "String", "k8s", "pod"),
        _col("k8s_pod_uid", "String", "k8s", "pod_uid"),
        _col("k8s_labels", "Map(String, String)", "k8s", "labels"),
        _col("k8s_annotations", "Map(String, String)", "k8s", "annotations"),
        _col("k8s_container", LC, "k8s", "container_name"),
        _col("k8s_image", LC, "k8s", "image"),
        _col("k8s_node", LC, "k8s", "node"),
        _col("k8s_workload_kind", LC, "k8s", "workload_kind"),
        _col("k8s_workload_name", LC, "k8s", "workload_name"),
        _col("k8s_service_account", LC, "k8s", "service_account"),
        _col("net_family", "Int32", "net", "family"),
        _col("net_protocol", "Int32", "net", "protocol"),
        _col("net_local_addr", "String", "net", "local_addr"),
        _col("net_local_port", "Int32", "net", "local_port"),
        _col("net_remote_addr", "String", "net", "remote_addr"),
        _col("net_remote_port", "Int32", "net", "remote_port"),
    ]
    cols += [_col(f"cred_{key}", "Nullable(Int64)", "cred", key) for key in _CRED_FIELDS]
    cols += [
        _col("exit_code", "Int64", "top"),
        _col("attrs", "Map(String, String)", "top"),
        Column("trace_id", "String", pa.string(), lambda p: list(p.trace_ids)),
    ]
    return cols


class _AlertParts(_Parts):
    def __init__(self, alerts: Sequence[dict], trace_ids: Sequence[str]):
        super().__init__([a["event"] for a in alerts], trace_ids)
        self.alert = alerts


def _alert_columns(event_columns: list[Column]) -> list[Column]:
    """The alert's own fields, then every column of its triggering event (`time` renamed `event_time`)."""
    own = [
        _col("time", TIME, "alert", "time_ns"),
        _col("alert_id", "UUID", "alert"),
        _col("rule_id", LC, "alert"),
        _col("rule_version", LC, "alert"),
        _col("severity", LC, "alert"),
        _col("message", "String", "alert"),
        _col("tags", "Array(LowCardinality(String))", "alert"),
        _col("actions", "Array(LowCardinality(String))", "alert"),
        _col("score", "Float64", "alert"),
        _col("related_event_ids", "Array(UUID)", "alert"),
    ]
    event = [Column("event_time", c.ch_type, c.arrow, c.build) if c.name == "time" else c for c in event_columns]
    return own + event


def _to_arrow(values: list | pa.Array, arrow_type: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array):
        return values
    if pa.types.is_timestamp(arrow_type):  # from Python ints directly is ~45 µs per value; via int64, ~20 ns
        return pa.array(values, pa.int64()).view(arrow_type)
    return pa.array(values, arrow_type)


# ------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    parts: type[_Parts]
    engine_key: str  # ORDER BY (the ReplacingMergeTree dedup key)
    primary_key: str  # a prefix of it: what the sparse index holds
    extra: str  # skip indexes and MATERIALIZED columns
    comment: str
    time_key: str = "time"  # partitions and TTL: must be equal for a row and its replays

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column_lists(self, records: Sequence[dict], trace_ids: Sequence[str]) -> list[list]:
        parts = self.parts(records, trace_ids)
        return [v.to_pylist() if isinstance(v, pa.Array) else v for v in (c.build(parts) for c in self.columns)]

    def arrow(self, records: Sequence[dict], trace_ids: Sequence[str]) -> pa.Table:
        """Decoded Avro records (and one trace id per record) as an Arrow table in column order."""
        parts = self.parts(records, trace_ids)
        return pa.Table.from_arrays([_to_arrow(c.build(parts), c.arrow) for c in self.columns],
                                    names=self.column_names)

    def ddl(self, database: str | None = None, ttl_days: int = 0) -> str:
        cols = ",\n    ".join(f"`{c.name}` {c.ch_type}" for c in self.columns)
        ttl = f"\nTTL toDateTime({self.time_key}) + INTERVAL {int(ttl_days)} DAY DELETE" if ttl_days > 0 else ""
        return (f"CREATE TABLE IF NOT EXISTS {_qualified(self.name, database)} (\n    {cols},\n    {self.extra}\n)\n"
                f"ENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD({self.time_key})\n"
                f"PRIMARY KEY ({self.primary_key})\nORDER BY ({self.engine_key}){ttl}\n"
                f"COMMENT {_quote(self.comment)}")


EVENT_COLUMNS = _event_columns()

EVENTS = Table(
    "events", tuple(EVENT_COLUMNS), _Parts,
    engine_key="host, event_type, toStartOfHour(time), file_path, event_id",
    primary_key="host, event_type, toStartOfHour(time)",
    extra=("`inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3),\n"
           "    INDEX file_path_bf file_path TYPE bloom_filter(0.01) GRANULARITY 4,\n"
           "    INDEX event_id_bf event_id TYPE bloom_filter(0.01) GRANULARITY 4,\n"
           "    INDEX container_bf container_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    comment=("fimstream enriched events, one row per event (schemas/raw_event.avsc + enrichment.avsc). "
             "At-least-once pipeline: a replay inserts copies, which ReplacingMergeTree collapses by "
             "(host, event_type, hour, file_path, event_id) in background merges; read with FINAL or "
             "SETTINGS final=1 for exact results (docs/store.md). Paths/exe/args are raw bytes."),
)

ALERTS = Table(
    "alerts", tuple(_alert_columns(EVENT_COLUMNS)), _AlertParts,
    # keyed by the event's time, not the detector's: a replayed alert (same alert_id, derived from rule
    # and event) has a new `time` but the same event_time, so it collapses with the first one
    engine_key="toStartOfHour(event_time), rule_id, host, alert_id",
    primary_key="toStartOfHour(event_time), rule_id",
    time_key="event_time",
    extra=("`severity_level` UInt8 MATERIALIZED indexOf(['info', 'low', 'medium', 'high', 'critical'], severity),\n"
           "    `inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3),\n"
           "    INDEX alert_id_bf alert_id TYPE bloom_filter(0.01) GRANULARITY 4,\n"
           "    INDEX event_id_bf event_id TYPE bloom_filter(0.01) GRANULARITY 4"),
    comment=("fimstream alerts (schemas/alert.avsc) with every column of the triggering event "
             "(event_time = its time). alert_id derives from (rule, event), so replays collapse by "
             "(event hour, rule_id, host, alert_id) in background "
             "merges; read with FINAL or SETTINGS final=1 for exact results (docs/store.md)."),
)

class _StatsParts:
    """One row per (stats record, event type): the record's own fields repeated on each type's row."""

    def __init__(self, records: Sequence[dict], trace_ids: Sequence[str]):
        self.top, self.counters = [], []
        for r in records:
            for c in r["counters"] or [_NO_COUNTERS]:  # a record without types still carries its loss counts
                self.top.append(r)
                self.counters.append(c)


_NO_COUNTERS = {"event_type": "", "seen": 0, "approved": 0, "discarded": 0, "filtered": 0, "emitted": 0, "lost": 0}

STATS = Table(
    "collector_stats",
    (_col("time", TIME, "top", "time_ns"), _col("host", LC, "top"), _col("collector_id", LC, "top"),
     _col("interval_ns", "Int64", "top"), _col("event_type", LC, "counters"),
     *(_col(k, "Int64", "counters") for k in ("seen", "approved", "discarded", "filtered", "emitted", "lost")),
     *(_col(k, "Int64", "top") for k in ("ringbuf_lost", "userspace_dropped", "kafka_backpressure_ns", "published"))),
    _StatsParts,
    engine_key="host, collector_id, event_type, time",
    primary_key="host, collector_id, event_type",
    extra="`inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)",
    comment=("fimstream collector counters (schemas/collector_stats.avsc), one row per collector, interval and "
             "event type: seen = discarded + filtered + emitted + lost in the kernel. The in-kernel filter "
             "ratio is 1 - sum(emitted) / sum(seen)."),
)

TABLES = (EVENTS, ALERTS, STATS)


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _qualified(name: str, database: str | None) -> str:
    return f"`{database}`.`{name}`" if database else f"`{name}`"


# ------------------------------------------------------------------------------------------- client
def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def chdb_path(url: str) -> Path | None:
    """The data directory of a chdb:///path URL (None for a server URL or chdb://memory)."""
    if not is_embedded(url):
        return None
    parsed = urlparse(url)
    return Path(parsed.path) if not parsed.netloc and parsed.path else None


def redact_url(url: str) -> str:
    """The URL without its password (for logs and heartbeat files)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


def query_token(settings: Settings, create: bool = False) -> str | None:
    """The write token of the embedded store's query endpoint: <state_dir>/query-token, readable only by
    its owner (whoever can read it could open the store directly anyway)."""
    path = Path(settings.state_dir) / "query-token"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    except PermissionError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def engine_lock(client: Client):
    """ENGINE_LOCK for an in-process chDB client, nothing for a server."""
    return ENGINE_LOCK if type(client).__name__ == "ChdbClient" else contextlib.nullcontext()


def open_client(target: Settings | str, **options: Any) -> Client:
    """A clickhouse-connect client for the store: embedded chDB or a server, from one URL."""
    url = target.store_url if isinstance(target, Settings) else target
    path = chdb_path(url)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        with ENGINE_LOCK:
            return clickhouse_connect.get_client(dsn=url, **options)
    options.setdefault("connect_timeout", 5)
    options.setdefault("send_receive_timeout", 60)
    return clickhouse_connect.get_client(dsn=url, **options)


def ensure_schema(client: Client, ttl_days: int = 0) -> None:
    """Create the tables if missing, add columns newer builds introduced, and apply the TTL setting.
    Safe to run at every start and from several sinks at once (every statement is idempotent)."""
    with engine_lock(client):
        _ensure_schema(client, ttl_days)


def _ensure_schema(client: Client, ttl_days: int) -> None:
    database = client.database or None
    for table in TABLES:
        client.command(table.ddl(database, ttl_days))
        existing = set(client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
            parameters={"t": table.name}).result_columns[0])
        for col in table.columns:
            if col.name not in existing:
                log.info("store: adding column %s.%s %s", table.name, col.name, col.ch_type)
                client.command(f"ALTER TABLE {_qualified(table.name, database)} "
                               f"ADD COLUMN IF NOT EXISTS `{col.name}` {col.ch_type}")
        _apply_ttl(client, table, database, ttl_days)


def _apply_ttl(client: Client, table: Table, database: str | None, ttl_days: int) -> None:
    create = client.command(f"SHOW CREATE TABLE {_qualified(table.name, database)}")
    create = create if isinstance(create, str) else "\t".join(map(str, create))
    current = re.search(r"TTL toDateTime\(time\) \+ (?:INTERVAL (\d+) DAY|toIntervalDay\((\d+)\))", create.replace("\\n", " "))
    days = int(current.group(1) or current.group(2)) if current else 0
    if days == ttl_days:
        return
    name = _qualified(table.name, database)
    if ttl_days > 0:
        client.command(f"ALTER TABLE {name} MODIFY TTL toDateTime(time) + INTERVAL {int(ttl_days)} DAY DELETE")
    else:
        client.command(f"ALTER TABLE {name} REMOVE TTL")


def insert_arrow(client: Client, table: Table, data: pa.Table) -> None:
    """Insert one Arrow batch; serialized with the query endpoint when the engine is in-process."""
    with engine_lock(client):
        client.insert_arrow(table.name, data)
