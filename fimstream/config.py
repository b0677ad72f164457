"""Configuration shared by every stage: defaults < YAML file (FIMSTREAM_CONFIG) < FIMSTREAM_* env < CLI flags.

One Settings object describes where the broker and the store are and what the topics are called, so the
embedded single-machine setup and a production cluster differ only by configuration.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/fimstream")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "fimstream"


@dataclass
class Topics:
    raw: str = "fimstream.events.raw"
    enriched: str = "fimstream.events.enriched"
    alerts: str = "fimstream.alerts"
    alerts_json: str = "fimstream.alerts.json"  # one JSON alert per message, for SIEMs
    deadletter: str = "fimstream.deadletter"
    stats: str = "fimstream.stats"
    schemas: str = "fimstream.schemas"  # writer schemas by fingerprint (schema evolution)
    control: str = "fimstream.control"  # rule reloads and other operator commands

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


@dataclass
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security: dict[str, Any] = field(default_factory=dict)  # sasl/ssl options passed to aiokafka
    partitions: int = 4  # per topic when fimstream creates them; scale a stage up to this many workers
    replication: int = 1
    compression: str = "lz4"
    batch_events: int = 200  # events per Kafka message on internal topics
    linger_ms: int = 20  # how long a partial batch may wait
    producer_max_batch_bytes: int = 1 << 20
    topics: Topics = field(default_factory=Topics)
    group_prefix: str = "fimstream"  # consumer groups are <prefix>-<stage>: two pipelines can share a cluster
    clickhouse_url: str = ""  # "" = embedded chDB under state_dir; or http(s)://user:pass@host:8123/db
    query_listen: str = "127.0.0.1:8123"  # embedded store's ClickHouse-HTTP endpoint, served by the sink
    state_dir: Path = field(default_factory=default_state_dir)
    rules: Path = Path("rules")
    host: str = field(default_factory=socket.gethostname)
    node_name: str = ""  # Kubernetes node (downward API); defaults to host
    # the rules' needs pushed into the kernel (approvers, discarders): events no rule can match never
    # leave it. Off: every event is published (the detector still applies the rules)
    kernel_filter: bool = True
    # the eBPF programs read kernel structs with direct loads (bpf_rdonly_cast) where the kernel allows;
    # off: probe reads everywhere (slower; for a kernel whose verifier misbehaves with them)
    direct_reads: bool = True
    # enforcement in the collector: kill/deny rules of `rules` (docs/enforcement.md)
    enforce: bool = True
    enforce_deny_timeout_ms: int = 250  # a fanotify decision not made by then gets the timeout answer
    enforce_deny_on_timeout: str = "allow"  # "allow" (fail open) or "deny" (fail closed)

    def group(self, stage: str) -> str:
        return f"{self.group_prefix}-{stage}"

    @property
    def chdb_path(self) -> Path:
        return self.state_dir / "clickhouse"

    @property
    def store_url(self) -> str:
        return self.clickhouse_url or f"chdb://{self.chdb_path}"

    @property
    def embedded_store(self) -> bool:
        return self.store_url.startswith("chdb://")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(current: Any, value: Any) -> Any:
    if isinstance(current, bool):
        return str(value).lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
    if isinstance(current, int):
        return int(value)
    if isinstance(current, Path):
        return Path(value)
    if isinstance(current, dict) and isinstance(value, str):
        return yaml.safe_load(value) or {}
    return value


def _apply(settings: Settings, values: dict[str, Any], origin: str) -> None:
    for key, value in values.items():
        if key == "topics" and isinstance(value, dict):
            for tkey, tval in value.items():
                if not hasattr(settings.topics, tkey):
                    raise ValueError(f"{origin}: unknown topic '{tkey}'")
                setattr(settings.topics, tkey, str(tval))
            continue
        if key.startswith("topic_") and hasattr(settings.topics, key[6:]):
            setattr(settings.topics, key[6:], str(value))
            continue
        if not hasattr(settings, key) or key == "topics":
            raise ValueError(f"{origin}: unknown setting '{key}'")
        setattr(settings, key, _coerce(getattr(settings, key), value))


def load_settings(config_file: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    env = os.environ if env is None else env
    settings = Settings()
    path = config_file or env.get("FIMSTREAM_CONFIG")
    if path:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        _apply(settings, data, str(path))
    prefixed = {k[len("FIMSTREAM_"):].lower(): v for k, v in env.items()
                if k.startswith("FIMSTREAM_") and k not in ("FIMSTREAM_CONFIG",)}
    known = {f.name for f in dataclasses.fields(Settings)} | {f"topic_{f.name}" for f in dataclasses.fields(Topics)}
    _apply(settings, {k: v for k, v in prefixed.items() if k in known}, "environment")
    _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "command line")
    if not settings.node_name:
        settings.node_name = settings.host
    return settings
