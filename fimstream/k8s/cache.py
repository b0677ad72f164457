"""Pod metadata cache: which pod, workload, labels... a container id or pod uid belongs to.

Four reflectors (pods; namespaces; ReplicaSets and Jobs to resolve owners) feed one store. Lookups are
lock-free dict reads of immutable K8sContext records (safe under the GIL); writers (reflector threads,
the expiry thread) serialize on one lock and notify listeners, in order, while holding it.

Enricher usage:

    cache = MetadataCache(K8sSettings.from_env(), listeners=[on_change]).start()   # or host mode
    res = cache.resolve(parse_cgroup(event_cgroup))
    if res.pending: hold the event briefly (bounded), then resolve again / emit as "unresolved"
    elif res.context: enrichment = res.context.enrichment(ref.container_id, ref.runtime)

Deleted pods keep answering for `tombstone_seconds` (events lag behind in Kafka), then a Change with
context None is emitted and the uid is remembered as gone (never "pending") for `forget_seconds`.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from kubernetes import client as k8s_client

from fimstream.containers import ContainerRef
from fimstream.k8s.client import K8sSettings, connect
from fimstream.k8s.model import (EMPTY_MAP, AnnotationFilter, K8sContext, ParsedNamespace, ParsedOwner, ParsedPod,
                                 fallback_workload, parse_namespace, parse_owner, parse_pod)
from fimstream.k8s.reflector import Reflector

log = logging.getLogger("fimstream.k8s")


class Change(NamedTuple):
    kind: str  # "container" (key = container id) or "pod" (key = pod uid: containers not in status yet)
    key: str
    context: K8sContext | None  # None: removed (the pod was deleted tombstone_seconds ago)


class Resolution(NamedTuple):
    context: K8sContext | None  # container-level if the container id is known, else pod-level, else None
    pending: bool  # more may come soon (pod or container not visible yet): worth holding the event briefly


Listener = Callable[[Change], Any]
_NOTHING = Resolution(None, False)
_NOT_YET = Resolution(None, True)
_new_tuple = tuple.__new__  # builds a Resolution in a third of NamedTuple's own __new__ time


class _SharedMap(dict):
    """A label dict shared by sibling pods (weakly indexed, so it dies with its last pod)."""
    __slots__ = ("__weakref__",)


@dataclasses.dataclass(slots=True)
class _PodEntry:
    ctx: K8sContext  # pod-level record
    containers: tuple[K8sContext, ...]  # one per container id in the status
    owner_kind: str
    owner_name: str
    pod_keys: tuple[str, ...]  # uid, and the static pod uid of a mirror pod (what its cgroups carry)
    deleted_at: float = 0.0  # monotonic time of deletion, 0 while the pod exists


class MetadataCache:
    def __init__(self, settings: K8sSettings | None = None, *, api_client: k8s_client.ApiClient | None = None,
                 listeners: Iterable[Listener] = ()):
        self.settings = settings or K8sSettings()
        self.mode = "stopped"  # "kubernetes" or "host" once started
        self._synced = False
        self.reason = ""  # where the API server is, or why host mode
        self._api = api_client
        self._annotations = AnnotationFilter(self.settings.annotations)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._listeners: list[Listener] = list(listeners)
        # lookups (read without the lock)
        self._by_container: dict[str, K8sContext] = {}
        self._by_pod: dict[str, K8sContext] = {}
        self._pods: dict[str, _PodEntry] = {}
        self._ns_labels: dict[str, Mapping[str, str]] = {}
        # (namespace, name) -> workload, only where the pod alone would not tell (see _owner_workload)
        self._owners: dict[str, dict[tuple[str, str], tuple[str, str]]] = {"ReplicaSet": {}, "Job": {}}
        self._shared_labels: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._expiry: deque[tuple[float, str, str, str]] = deque()  # (deadline, kind, key, pod uid), FIFO
        self._gone: dict[str, float] = {}  # deleted pod uid -> forget deadline (insertion ordered)
        self._reflectors: dict[str, Reflector] = {}
        self._janitor: threading.Thread | None = None
        self.counters = {"changes": 0, "listener_errors": 0, "expired": 0}

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "MetadataCache":
        """Connect and start the watches (non-blocking: see wait_synced), or enter host mode."""
        if self._api is None:
            self._api, self.reason = connect(self.settings)
        elif not self.reason:
            self.reason = f"api client -> {self._api.configuration.host}"
        if self._api is None:
            self.mode = "host"
            log.warning("Kubernetes metadata: HOST MODE (%s). Events get host and container context only.",
                        self.reason)
            return self
        self.mode = "kubernetes"
        s = self.settings
        core = k8s_client.CoreV1Api(self._api)
        pods_selector = f"spec.nodeName={s.node_name}" if s.node_name else None
        self._add_reflector("Pod", core.list_pod_for_all_namespaces, self._convert_pod, pods_selector)
        if s.watch_namespaces:
            self._add_reflector("Namespace", core.list_namespace, parse_namespace)
        if s.resolve_owners:
            self._add_reflector("ReplicaSet", k8s_client.AppsV1Api(self._api).list_replica_set_for_all_namespaces,
                                self._convert_replicaset)
            self._add_reflector("Job", k8s_client.BatchV1Api(self._api).list_job_for_all_namespaces,
                                self._convert_job)
        for r in self._reflectors.values():
            r.start()
        self._janitor = threading.Thread(target=self._expire_loop, name="k8s-expiry", daemon=True)
        self._janitor.start()
        log.info("Kubernetes metadata: watching %s via %s%s", ", ".join(self._reflectors), self.reason,
                 f" (node {s.node_name} only)" if s.node_name else "")
        return self

    def _add_reflector(self, kind: str, list_call, convert, field_selector: str | None = None) -> None:
        self._reflectors[kind] = Reflector(kind, list_call, convert, self, self.settings.watch, field_selector)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for r in self._reflectors.values():
            r.stop(timeout)
        if self._janitor:
            self._janitor.join(timeout)

    def __enter__(self) -> "MetadataCache":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_listener(self, listener: Listener) -> None:
        """Called with each Change, from a watch thread, in order, under the cache's lock: keep it quick
        (an asyncio consumer should hand over with loop.call_soon_threadsafe)."""
        with self._lock:
            self._listeners.append(listener)

    @property
    def synced(self) -> bool:
        """Every watched resource has been listed once (host mode: trivially). Never goes back to False."""
        if not self._synced:
            self._synced = self.mode == "host" or (self.mode == "kubernetes" and all(
                r.synced.is_set() for r in self._reflectors.values()))
        return self._synced

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self._reflectors.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.synced.wait(left):
                return False
        return self.mode in ("kubernetes", "host")

    def resync(self) -> None:
        """Re-list everything now (e.g. after the enricher restarted and distrusts its table)."""
        for r in self._reflectors.values():
            r.resync()

    # -------------------------------------------------------------------------------------- lookups
    def by_container_id(self, container_id: str) -> K8sContext | None:
        return self._by_container.get(container_id)

    def by_pod_uid(self, pod_uid: str) -> K8sContext | None:
        return self._by_pod.get(pod_uid)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self._ns_labels.get(namespace, EMPTY_MAP)

    def resolve(self, ref: ContainerRef) -> Resolution:
        """What is known about a cgroup's container (see containers.parse_cgroup), and whether more may
        come: a pod uid not visible yet, a container not in its pod's status yet, or no list yet."""
        if self.mode != "kubernetes":
            return _NOTHING
        container_id, pod_uid = ref.container_id, ref.pod_uid
        if container_id:
            ctx = self._by_container.get(container_id)
            if ctx is not None:
                return _new_tuple(Resolution, (ctx, False))
        if pod_uid is None:
            # Not a kubepods cgroup; only a watch that has not listed yet could still know the id.
            return _NOT_YET if container_id and not self.synced else _NOTHING
        ctx = self._by_pod.get(pod_uid)
        if ctx is not None:
            entry = self._pods.get(ctx.pod_uid)  # (a static pod's cgroup uid differs from its API uid)
            return _new_tuple(Resolution, (ctx, bool(container_id) and entry is not None and not entry.deleted_at))
        return _NOTHING if pod_uid in self._gone else _NOT_YET

    def wait_for(self, ref: ContainerRef, timeout: float) -> Resolution:
        """resolve(), waiting up to `timeout` while the answer is pending (for tools and tests; the
        enricher holds events without blocking)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                res = self.resolve(ref)
                left = deadline - time.monotonic()
                if not res.pending or left <= 0:
                    return res
                self._changed.wait(left)

    def snapshot(self) -> list[Change]:
        """Every current record, as Changes (to rebuild a table after a restart)."""
        with self._lock:
            return ([Change("pod", k, v) for k, v in self._by_pod.items()]
                    + [Change("container", k, v) for k, v in self._by_container.items()])

    def stats(self) -> dict[str, Any]:
        per = {kind: r.stats.as_dict() for kind, r in self._reflectors.items()}
        totals = {key: sum(p[key] for p in per.values())
                  for key in ("events", "lists", "relists", "gone", "reconnects", "bookmarks", "errors")}
        return {"mode": self.mode, "reason": self.reason, "synced": self.synced,
                "pods": len(self._pods), "containers": len(self._by_container),
                "namespaces": len(self._ns_labels),
                "owners": sum(len(t) for t in self._owners.values()),
                "tombstones": len(self._expiry), **self.counters, **totals, "resources": per}

    # --------------------------------------------------------------------------- conversion (no lock)
    def _convert_pod(self, obj: dict) -> ParsedPod:
        return parse_pod(obj, self._annotations)

    @staticmethod
    def _convert_replicaset(obj: dict) -> tuple[ParsedOwner, tuple[str, str] | None]:
        owner = parse_owner(obj)
        labels = (obj["metadata"].get("labels") or {})
        # A Deployment's ReplicaSet is what the pod's own labels already tell: no need to keep it.
        implied = fallback_workload("ReplicaSet", owner.name, labels)
        actual = (owner.owner_kind, owner.owner_name) if owner.owner_kind else ("ReplicaSet", owner.name)
        return owner, (None if actual == implied else actual)

    @staticmethod
    def _convert_job(obj: dict) -> tuple[ParsedOwner, tuple[str, str] | None]:
        owner = parse_owner(obj)
        return owner, ((owner.owner_kind, owner.owner_name) if owner.owner_kind else None)

    # ------------------------------------------------------------------ ReflectorSink (writer side)
    def replace(self, kind: str, records: list, resource_version: str) -> None:
        changes: list[Change] = []
        with self._lock:
            if kind == "Pod":
                listed = set()
                for pod in records:
                    listed.add(pod.uid)
                    self._upsert_pod(pod, changes)
                for uid, entry in list(self._pods.items()):
                    if uid not in listed and not entry.deleted_at:
                        self._delete_pod(uid)  # deleted while we were not watching
            elif kind == "Namespace":
                self._ns_labels = {ns.name: ns.labels for ns in records}
            else:
                table = {(o.namespace, o.name): w for o, w in records if w is not None}
                old = self._owners[kind]
                self._owners[kind] = table
                moved = {k for k in table.keys() | old.keys() if table.get(k) != old.get(k) and k in table}
                self._reresolve(kind, moved, changes)
            self._publish(changes)

    def apply(self, kind: str, event_type: str, record: Any) -> None:
        changes: list[Change] = []
        with self._lock:
            if kind == "Pod":
                if event_type == "DELETED":
                    self._delete_pod(record.uid)
                else:
                    self._upsert_pod(record, changes)
            elif kind == "Namespace":
                ns: ParsedNamespace = record
                if event_type == "DELETED":
                    self._ns_labels.pop(ns.name, None)
                else:
                    self._ns_labels[ns.name] = ns.labels
            else:
                owner, workload = record
                key = (owner.namespace, owner.name)
                table = self._owners[kind]
                if event_type == "DELETED" or workload is None:
                    # A deleted owner leaves its pods' last answer alone: they are going away with it.
                    if workload is None and table.pop(key, None) is not None and event_type != "DELETED":
                        self._reresolve(kind, {key}, changes)
                elif table.get(key) != workload:
                    table[key] = workload
                    self._reresolve(kind, {key}, changes)
            self._publish(changes)

    # ---------------------------------------------------------------------------- store (locked)
    def _owner_workload(self, namespace: str, owner_kind: str, owner_name: str,
                        labels: Mapping[str, str]) -> tuple[str, str]:
        table = self._owners.get(owner_kind)
        if table:
            workload = table.get((namespace, owner_name))
            if workload is not None:
                return workload
        return fallback_workload(owner_kind, owner_name, labels)

    def _share(self, pod: ParsedPod) -> Mapping[str, str]:
        """Sibling pods (same owner) nearly always carry identical labels: keep one dict for them."""
        if not pod.owner_kind or not pod.labels:
            return pod.labels
        key = (pod.namespace, pod.owner_kind, pod.owner_name)
        shared = self._shared_labels.get(key)
        if shared is not None and shared == pod.labels:
            return shared
        shared = _SharedMap(pod.labels)
        self._shared_labels[key] = shared
        return shared

    def _upsert_pod(self, pod: ParsedPod, changes: list[Change]) -> None:
        old = self._pods.get(pod.uid)
        labels = self._share(pod)
        workload_kind, workload_name = self._owner_workload(pod.namespace, pod.owner_kind, pod.owner_name, labels)
        # With a single container, an event from a container not in the status yet can only be that one.
        only = next(iter(pod.images.items())) if len(pod.images) == 1 else ("", "")
        pod_ctx = K8sContext(pod.namespace, pod.name, pod.uid, labels, pod.annotations, only[0], only[1],
                             pod.node, workload_kind, workload_name, pod.service_account)
        containers: list[K8sContext] = []
        seen: set[str] = set()
        for st in pod.statuses:
            if st.container_id in seen:
                continue
            seen.add(st.container_id)
            containers.append(K8sContext(pod.namespace, pod.name, pod.uid, labels, pod.annotations, st.name,
                                         pod.images.get(st.name, ""), pod.node, workload_kind, workload_name,
                                         pod.service_account, st.container_id, st.runtime))
        keys = (pod.uid, pod.static_uid) if pod.static_uid else (pod.uid,)
        for key in keys:
            self._gone.pop(key, None)
            pod_ctx = self._set(self._by_pod, "pod", key, pod_ctx, changes)
        stored = tuple(self._set(self._by_container, "container", c.container_id, c, changes) for c in containers)
        self._pods[pod.uid] = _PodEntry(pod_ctx, stored, pod.owner_kind, pod.owner_name, keys)
        if old is not None:
            deadline = time.monotonic() + self.settings.tombstone_seconds
            for c in old.containers:
                if c.container_id not in seen:  # restarted twice: the id left the status; late events still come
                    self._expiry.append((deadline, "container", c.container_id, pod.uid))

    def _set(self, index: dict, kind: str, key: str, ctx: K8sContext, changes: list[Change]) -> K8sContext:
        """Store ctx under key unless an equal record is there; returns the stored record (so entries and
        indexes share objects, and expiry can tell its own records by identity)."""
        current = index.get(key)
        if current == ctx:
            return current
        index[key] = ctx
        changes.append(Change(kind, key, ctx))
        return ctx

    def _delete_pod(self, uid: str) -> None:
        entry = self._pods.get(uid)
        if entry is None or entry.deleted_at:
            return
        entry.deleted_at = now = time.monotonic()
        self._expiry.append((now + self.settings.tombstone_seconds, "pod", uid, uid))

    def _reresolve(self, kind: str, owners: set[tuple[str, str]], changes: list[Change]) -> None:
        if not owners:
            return
        for uid, entry in self._pods.items():
            if entry.owner_kind != kind or (entry.ctx.namespace, entry.owner_name) not in owners:
                continue
            wk, wn = self._owner_workload(entry.ctx.namespace, kind, entry.owner_name, entry.ctx.labels)
            if (wk, wn) == (entry.ctx.workload_kind, entry.ctx.workload_name):
                continue
            entry.ctx = _with_workload(entry.ctx, wk, wn)
            entry.containers = tuple(_with_workload(c, wk, wn) for c in entry.containers)
            for key in entry.pod_keys:
                self._set(self._by_pod, "pod", key, entry.ctx, changes)
            for c in entry.containers:
                self._set(self._by_container, "container", c.container_id, c, changes)

    def _publish(self, changes: list[Change]) -> None:
        self._changed.notify_all()
        if not changes:
            return
        self.counters["changes"] += len(changes)
        for change in changes:
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:
                    self.counters["listener_errors"] += 1
                    log.exception("k8s metadata listener failed on %s %s", change.kind, change.key)

    # ---------------------------------------------------------------------------------- expiry
    def _expire_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.expire()

    def expire(self, now: float | None = None) -> None:
        """Drop tombstones past their deadline (runs every second in its own thread)."""
        now = time.monotonic() if now is None else now
        changes: list[Change] = []
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now:
                _, kind, key, uid = self._expiry.popleft()
                entry = self._pods.get(uid)
                if kind == "pod":
                    if entry is None or not entry.deleted_at:
                        continue  # listed again since: it was not deleted after all
                    del self._pods[uid]
                    for pod_key in entry.pod_keys:
                        self._gone[pod_key] = now + self.settings.forget_seconds
                        if self._by_pod.get(pod_key) is entry.ctx:
                            del self._by_pod[pod_key]
                            changes.append(Change("pod", pod_key, None))
                    for c in entry.containers:
                        if self._by_container.get(c.container_id) is c:
                            del self._by_container[c.container_id]
                            changes.append(Change("container", c.container_id, None))
                    self.counters["expired"] += 1
                else:
                    ctx = self._by_container.get(key)
                    if ctx is not None and ctx.pod_uid == uid and (
                            entry is None or all(c.container_id != key for c in entry.containers)):
                        del self._by_container[key]
                        changes.append(Change("container", key, None))
            while self._gone:
                uid, deadline = next(iter(self._gone.items()))
                if deadline > now:
                    break
                del self._gone[uid]
            self._publish(changes)


def _with_workload(ctx: K8sContext, kind: str, name: str) -> K8sContext:
    return dataclasses.replace(ctx, workload_kind=kind, workload_name=name)
