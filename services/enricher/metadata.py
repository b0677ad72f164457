"""What the enricher knows about a cgroup: its container and, in a cluster, its pod and workload.

In a cluster, Kubernetes metadata lives in a Faust GlobalTable keyed by container id (and pod uid), so
every enricher worker reads the same data from its local copy. Only the group's leader runs the
list+watch (fimstream.k8s.MetadataCache) and writes changes into the table: one watch per enricher
group, not per worker. When a worker becomes leader it re-lists and rewrites the whole table instead of
trusting a changelog that may be incomplete (Tansu loses the last changelog record on restore, see
DESIGN.md), and it rewrites it again at every resync.

Host mode (no kubeconfig / not in a cluster): container id and runtime from the cgroup path only.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import queue
import time

import faust

from fimstream.config import Settings
from fimstream.containers import ContainerRef, parse_cgroup
from fimstream.events import _templates
from fimstream.k8s import Change, K8sContext, K8sSettings, MetadataCache, connect

log = logging.getLogger("fimstream.enricher")
TABLE = "k8s-metadata"
GONE = {"gone": True}  # a deleted pod: events of its cgroup are not worth holding
REPUBLISH_EVERY_S = 300.0


class _MetadataTable(faust.GlobalTable):
    """GlobalTable that counts changelog updates, so readers know when cached answers went stale."""

    generation = 0

    def apply_changelog_batch(self, batch) -> None:
        super().apply_changelog_batch(batch)
        type(self).generation += 1


def _key(kind: str, key: str) -> str:
    return ("c/" if kind == "container" else "p/") + key


class MetadataResolver:
    def __init__(self, settings: Settings, k8s: K8sSettings | None = None):
        self.settings = settings
        self.k8s = k8s or K8sSettings.from_env()
        self.api, self.reason = connect(self.k8s)
        self.mode = "kubernetes" if self.api is not None else "host"
        self.table: faust.GlobalTable | None = None
        self.cache: MetadataCache | None = None  # only on the leader
        self._changes: queue.SimpleQueue[Change] = queue.SimpleQueue()
        self._empty = _templates()["enrichment"]
        self._local_generation = 0
        self._task: asyncio.Task | None = None
        self.written = 0

    # --------------------------------------------------------------------------------- lifecycle
    def attach(self, app: faust.App) -> None:
        """Declare the table on the Faust app (before it starts)."""
        if self.mode == "kubernetes":
            # what app.GlobalTable() does, with our subclass. partitions=1 + recovery_buffer_size=1 is Faust's
            # advice for GlobalTables of several workers; use_partitioner: the leader writes outside any stream
            self.table = app.tables.add(_MetadataTable(
                app, name=TABLE, default=None, beacon=app.tables.beacon, partitions=1, standby_buffer_size=1,
                recovery_buffer_size=1, is_global=True, use_partitioner=True))  # keys and values: JSON
        self.app = app

    async def start(self) -> None:
        if self.mode == "host":
            log.warning("metadata: HOST MODE (%s): container ids from cgroup paths, no pod metadata", self.reason)
            return
        log.info("metadata: Kubernetes API at %s; the enricher group's leader watches it", self.reason)
        self._task = asyncio.create_task(self._leadership())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._stop_watch()

    @property
    def generation(self) -> int:
        """Changes whenever the metadata may have changed (cached enrichments must be dropped)."""
        return self._local_generation + (_MetadataTable.generation if self.table is not None else 0)

    # ------------------------------------------------------------------------------ leader watch
    async def _leadership(self) -> None:
        try:
            await self._lead()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("metadata: the leader loop failed; metadata will go stale")
            raise

    async def _lead(self) -> None:
        last_publish = 0.0
        while True:
            try:
                leader = self.app.is_leader()
            except (AttributeError, RuntimeError):  # consumer not assigned yet
                leader = False
            if leader and self.cache is None:
                await self._start_watch()
                last_publish = time.monotonic()
            elif not leader and self.cache is not None:
                log.info("metadata: no longer the leader; stopping the watch")
                self._stop_watch()
            if self.cache is not None and time.monotonic() - last_publish > REPUBLISH_EVERY_S:
                self._republish()
                last_publish = time.monotonic()
            self._drain()
            await asyncio.sleep(0.1)

    async def _start_watch(self) -> None:
        log.info("metadata: leader: listing and watching pods, namespaces, replicasets, jobs")
        self.cache = MetadataCache(self.k8s, api_client=self.api, listeners=[self._changes.put])
        self.cache.start()
        deadline = time.monotonic() + 60.0
        while not self.cache.synced and time.monotonic() < deadline:  # cancellable, unlike wait_synced()
            await asyncio.sleep(0.2)
        self._republish()

    def _republish(self) -> None:
        """Write the whole cache into the table (after a (re)list, and periodically)."""
        for change in self.cache.snapshot():
            self._changes.put(change)

    def _stop_watch(self) -> None:
        if self.cache is not None:
            self.cache.stop()
            self.cache = None

    def _drain(self) -> None:
        wrote = 0
        while True:
            try:
                change = self._changes.get_nowait()
            except queue.Empty:
                break
            key = _key(change.kind, change.key)
            value = change.context.as_dict() if change.context is not None else GONE
            if self.table.get(key) != value:
                self.table[key] = value
                wrote += 1
        if wrote:
            self.written += wrote
            self._local_generation += 1

    # ----------------------------------------------------------------------------------- lookups
    def _lookup(self, ref: ContainerRef) -> tuple[K8sContext | None, bool]:
        """(context, pending) from the table: the same answers as MetadataCache.resolve."""
        table = self.table
        if ref.container_id:
            value = table.get("c/" + ref.container_id)
            if value and "gone" not in value:
                return K8sContext.from_dict(value), False
        if ref.pod_uid is None:
            return None, False
        value = table.get("p/" + ref.pod_uid)
        if value is None:
            return None, True  # the pod is not visible yet
        if "gone" in value:
            return None, False
        return K8sContext.from_dict(value), bool(ref.container_id)  # container not in the pod's status yet

    def resolve(self, cgroup: bytes) -> tuple[dict, bool]:
        """(Enrichment record, pending). Pending: the pod may become visible soon; worth holding."""
        ref = parse_cgroup(cgroup)
        if self.table is not None and not ref.is_host:
            ctx, pending = self._lookup(ref)
            if ctx is not None:
                out = ctx.enrichment(ref.container_id, ref.runtime)
                return out, pending
        else:
            pending = False
        out = copy.deepcopy(self._empty)
        out["container_id"] = ref.container_id
        out["container_runtime"] = ref.runtime
        out["enrich_status"] = "unresolved" if pending else ("container" if ref.container_id or ref.in_pod else "host")
        if ref.pod_uid:
            out["k8s"]["pod_uid"] = ref.pod_uid
        return out, pending

    def stats(self) -> dict:
        out = {"k8s_table_writes": self.written, "k8s_leader": int(self.cache is not None)}
        if self.table is not None:
            out["k8s_table_entries"] = len(self.table)
        if self.cache is not None:
            s = self.cache.stats()
            out.update({f"k8s_{k}": s[k] for k in ("pods", "relists", "gone", "reconnects", "errors")})
        return out
