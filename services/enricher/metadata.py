"""What the enricher knows about a cgroup: its container and, in a cluster, its pod.

Host mode (no Kubernetes API reachable): container id and runtime from the cgroup path only.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

from fimstream.config import Settings
from fimstream.containers import parse_cgroup
from fimstream.events import _templates

log = logging.getLogger("fimstream.enricher")


class MetadataResolver:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.mode = "host"
        self._listeners: list[Callable[[], None]] = []
        self._empty = _templates()["enrichment"]

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        log.info("metadata: host mode (container ids from cgroup paths, no Kubernetes API)")

    async def stop(self) -> None:
        pass

    def resolve(self, cgroup: bytes) -> dict:
        ref = parse_cgroup(cgroup)
        out = copy.deepcopy(self._empty)
        out["container_id"] = ref.container_id
        out["container_runtime"] = ref.runtime
        out["enrich_status"] = "container" if ref.container_id or ref.in_pod else "host"
        if ref.pod_uid:
            out["k8s"]["pod_uid"] = ref.pod_uid
        return out
