"""Compact records of what enrichment needs from Kubernetes objects, parsed from the API's JSON.

A pod object from the API server is 5-20 KB of JSON; enrichment needs a dozen strings of it. Parsing
keeps only those (strings interned: namespaces, nodes, images, label keys and values repeat across
pods), so the cache holds ~1-2 KB per pod instead of the object.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

from fimstream.containers import split_container_id

EMPTY_MAP: Mapping[str, str] = {}
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # on mirror pods: the static pod's uid (a hash)
_intern = sys.intern


@dataclass(frozen=True, slots=True)
class K8sContext:
    """Kubernetes context of one container (or of a pod whose container is not known yet).

    The first eleven fields are enrichment.avsc's KubernetesContext record, in order; `container_id`
    and `runtime` say which container the record describes ("" for a pod-level record). Instances are
    immutable and shared between threads; `labels`/`annotations` are shared dicts: never mutate them.
    """
    namespace: str
    pod: str
    pod_uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    container_name: str
    image: str
    node: str
    workload_kind: str
    workload_name: str
    service_account: str
    container_id: str = ""
    runtime: str = ""

    def record(self) -> dict[str, Any]:
        """The `k8s` field of an Enrichment record (enrichment.avsc KubernetesContext)."""
        return {
            "namespace": self.namespace, "pod": self.pod, "pod_uid": self.pod_uid,
            "labels": dict(self.labels), "annotations": dict(self.annotations),
            "container_name": self.container_name, "image": self.image, "node": self.node,
            "workload_kind": self.workload_kind, "workload_name": self.workload_name,
            "service_account": self.service_account,
        }

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-serializable (e.g. a Faust table value); from_dict() restores it."""
        out = self.record()
        out["container_id"], out["runtime"] = self.container_id, self.runtime
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "K8sContext":
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})

    def enrichment(self, container_id: str = "", runtime: str = "") -> dict[str, Any]:
        """A whole Enrichment record (enrich_status "kubernetes") for an event of this container.

        `container_id`/`runtime` from the event's cgroup fill in what a pod-level record lacks.
        """
        return {
            "container_id": self.container_id or container_id,
            "container_runtime": self.runtime or runtime,
            "enrich_status": "kubernetes",
            "k8s": self.record(),
        }


class ContainerStatus(NamedTuple):
    container_id: str  # without the runtime:// prefix
    runtime: str
    name: str


class ParsedPod(NamedTuple):
    uid: str
    name: str
    namespace: str
    node: str
    service_account: str
    labels: dict[str, str]
    annotations: dict[str, str]
    owner_kind: str  # controller owner reference ("" if none)
    owner_name: str
    images: dict[str, str]  # container name -> image, for containers, init and ephemeral containers
    statuses: tuple[ContainerStatus, ...]  # every container id the status names (current and last)
    resource_version: str
    static_uid: str = ""  # mirror pod of a static pod: kubelet names its cgroups by this uid, not metadata.uid


class ParsedOwner(NamedTuple):
    """A ReplicaSet or Job, reduced to its own controller (the workload a pod belongs to)."""
    namespace: str
    name: str
    owner_kind: str  # "" = not controlled: the ReplicaSet/Job is itself the workload
    owner_name: str


class ParsedNamespace(NamedTuple):
    name: str
    labels: dict[str, str]


class AnnotationFilter:
    """Allow-list of annotation keys: exact keys, or prefixes written as `prefix*`."""

    def __init__(self, patterns: Iterable[str] = ()):
        patterns = [p.strip() for p in patterns if p and p.strip()]
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def select(self, annotations: Mapping[str, str] | None) -> dict[str, str]:
        if not annotations or not self:
            return EMPTY_MAP  # type: ignore[return-value]
        return {_intern(k): _intern(v) for k, v in annotations.items()
                if k in self.exact or k.startswith(self.prefixes)} or EMPTY_MAP  # type: ignore[return-value]


def _strings(mapping: Mapping[str, str] | None) -> dict[str, str]:
    if not mapping:
        return EMPTY_MAP  # type: ignore[return-value]
    return {_intern(k): _intern(v) for k, v in mapping.items()}


def controller_ref(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) of the controller owner reference; the first owner if none is marked controller."""
    refs = metadata.get("ownerReferences") or ()
    chosen = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not chosen:
        return "", ""
    return _intern(chosen.get("kind", "")), _intern(chosen.get("name", ""))


def parse_pod(obj: Mapping[str, Any], annotations: AnnotationFilter) -> ParsedPod:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    images: dict[str, str] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or ():
            images[_intern(c["name"])] = _intern(c.get("image") or "")
    statuses: list[ContainerStatus] = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or ():
            name = _intern(cs.get("name", ""))
            if name not in images and cs.get("image"):
                images[name] = _intern(cs["image"])
            # The current container, and the one before the last restart: its late events still count.
            for cid in (cs.get("containerID"),
                        ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")):
                if cid:
                    runtime, bare = split_container_id(cid)
                    statuses.append(ContainerStatus(bare, _intern(runtime), name))
    owner_kind, owner_name = controller_ref(meta)
    raw_annotations = meta.get("annotations") or {}
    return ParsedPod(
        uid=meta["uid"],
        name=meta["name"],
        namespace=_intern(meta.get("namespace", "")),
        node=_intern(spec.get("nodeName") or ""),
        service_account=_intern(spec.get("serviceAccountName") or spec.get("serviceAccount") or ""),
        labels=_strings(meta.get("labels")),
        annotations=annotations.select(raw_annotations),
        owner_kind=owner_kind,
        owner_name=owner_name,
        images=images,
        statuses=tuple(statuses),
        resource_version=meta.get("resourceVersion", ""),
        static_uid=raw_annotations.get(MIRROR_ANNOTATION, ""),
    )


def parse_owner(obj: Mapping[str, Any]) -> ParsedOwner:
    meta = obj["metadata"]
    kind, name = controller_ref(meta)
    return ParsedOwner(_intern(meta.get("namespace", "")), _intern(meta["name"]), kind, name)


def parse_namespace(obj: Mapping[str, Any]) -> ParsedNamespace:
    meta = obj["metadata"]
    return ParsedNamespace(_intern(meta["name"]), _strings(meta.get("labels")))


def fallback_workload(owner_kind: str, owner_name: str, labels: Mapping[str, str]) -> tuple[str, str]:
    """The workload from the pod alone, before its ReplicaSet/Job is known (or when owners are not watched).

    A Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>`, and the hash is a pod label,
    so the Deployment is known from the pod itself. A Job's CronJob cannot be told from the pod.
    """
    if owner_kind == "ReplicaSet":
        template_hash = labels.get("pod-template-hash", "")
        if template_hash and owner_name.endswith("-" + template_hash):
            return "Deployment", owner_name[: -len(template_hash) - 1]
    return owner_kind, owner_name
