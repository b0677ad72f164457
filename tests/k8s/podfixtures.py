"""Pod objects as the API server returns them (kubectl get -o json), and the cgroups kubelet makes for them.

fixtures/*.json are complete objects of the shapes found on real clusters:
    pod-containerd-deployment   Deployment (ReplicaSet owner), 2 containers, a restarted one, Burstable
    pod-crio-statefulset        StatefulSet, cri-o, init container, Guaranteed (OpenShift-style annotations)
    pod-docker-daemonset        DaemonSet, docker:// (cri-dockerd), BestEffort, hostPID
    pod-containerd-cronjob      CronJob -> Job owner, init container, Burstable
    pod-static-mirror           static pod's mirror (Node owner; cgroups use the config.mirror hash as uid)
    pod-pending-deployment      scheduled, container still ContainerCreating (no containerID yet)
    cluster-objects             namespaces, the ReplicaSets and the Job that own the pods above

`cgroup_path(pod, container, driver)` gives the path kubelet + runtime create for a container, for the
systemd and cgroupfs cgroup drivers, so a test can place a process where a real node would.
"""
from __future__ import annotations

import copy
import json
import secrets
import uuid
from functools import lru_cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
POD_FIXTURES = ["pod-containerd-deployment", "pod-crio-statefulset", "pod-docker-daemonset",
                "pod-containerd-cronjob", "pod-static-mirror", "pod-pending-deployment"]


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def load(name: str) -> dict:
    """A fresh copy of fixtures/<name>.json."""
    return json.loads(_read(name))


def cluster_objects() -> list[dict]:
    """Namespaces, ReplicaSets and Jobs owning the fixture pods (create them before the pods)."""
    return load("cluster-objects")["items"]


def all_pods() -> list[dict]:
    return [load(n) for n in POD_FIXTURES]


def container_ids(pod: dict) -> dict[str, str]:
    """container name -> current container id (without runtime://) from the pod status."""
    out = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in pod.get("status", {}).get(key) or ():
            if cs.get("containerID"):
                out[cs["name"]] = cs["containerID"].split("://", 1)[1]
    return out


def clone(pod: dict, name: str, *, namespace: str | None = None, node: str | None = None,
          labels: dict | None = None) -> dict:
    """The same pod under a new identity: name, uid, container ids (as another replica would be)."""
    pod = copy.deepcopy(pod)
    meta = pod["metadata"]
    meta["name"] = name
    meta["uid"] = str(uuid.uuid4())
    meta.pop("resourceVersion", None)
    if namespace:
        meta["namespace"] = namespace
    if labels is not None:
        meta["labels"] = labels
    if node:
        pod["spec"]["nodeName"] = node
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in pod.get("status", {}).get(key) or ():
            for holder in (cs, (cs.get("state") or {}).get("terminated") or {},
                           (cs.get("lastState") or {}).get("terminated") or {}):
                if holder.get("containerID"):
                    runtime = holder["containerID"].split("://", 1)[0]
                    holder["containerID"] = f"{runtime}://{secrets.token_hex(32)}"
    return pod


def set_container_started(pod: dict, container: str, runtime: str = "containerd",
                          container_id: str | None = None) -> str:
    """Kubelet's status update once a container runs: returns the new container id."""
    cid = container_id or secrets.token_hex(32)
    statuses = pod.setdefault("status", {}).setdefault("containerStatuses", [])
    for cs in statuses:
        if cs["name"] == container:
            break
    else:
        cs = {"name": container, "image": "", "imageID": "", "lastState": {}, "restartCount": 0}
        statuses.append(cs)
    cs.update({"containerID": f"{runtime}://{cid}", "ready": True, "started": True,
               "state": {"running": {"startedAt": "2024-05-14T11:02:12Z"}}})
    pod["status"]["phase"] = "Running"
    return cid


def kubelet_pod_uid(pod: dict) -> str:
    """The uid kubelet names cgroups with: the static pod hash for mirror pods, else metadata.uid."""
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get("kubernetes.io/config.mirror") or pod["metadata"]["uid"]


_SCOPE_PREFIX = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}


def cgroup_path(pod: dict, container: str | None = None, driver: str = "systemd") -> str:
    """The cgroup (v2 path, or v1 hierarchy path) of a container of this pod, as kubelet makes it.

    container None: the pod's own cgroup. driver: "systemd" or "cgroupfs".
    """
    uid = kubelet_pod_uid(pod)
    qos = (pod.get("status") or {}).get("qosClass", "BestEffort").lower()
    cid = runtime = ""
    if container is not None:
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for cs in pod.get("status", {}).get(key) or ():
                if cs["name"] == container and cs.get("containerID"):
                    runtime, cid = cs["containerID"].split("://", 1)
        if not cid:
            raise KeyError(f"container {container!r} has no containerID in the pod status")
    if driver == "systemd":
        escaped = uid.replace("-", "_")
        if qos == "guaranteed":
            path = f"/kubepods.slice/kubepods-pod{escaped}.slice"
        else:
            path = f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{escaped}.slice"
        return path + (f"/{_SCOPE_PREFIX[runtime]}-{cid}.scope" if cid else "")
    if driver == "cgroupfs":
        path = "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"
        if not cid:
            return path
        return path + (f"/crio-{cid}" if runtime == "cri-o" else f"/{cid}")
    raise ValueError(f"unknown cgroup driver {driver!r}")
