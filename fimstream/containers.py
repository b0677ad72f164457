"""Which container (and which Kubernetes pod) a cgroup path belongs to.

The collector reports each process's cgroup path (cgroup v2 path, or the v1 pids/memory hierarchy path,
possibly as the raw kernel bytes or a whole /proc/PID/cgroup file). Container runtimes and kubelet name
cgroups in a few well-known ways:

    systemd driver   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
                         cri-containerd-<64hex>.scope | crio-<64hex>.scope | docker-<64hex>.scope
    cgroupfs driver  /kubepods/burstable/pod<uid>/<64hex>          (containerd, cri-dockerd: a bare id)
                     /kubepods/besteffort/pod<uid>/crio-<64hex>     (cri-o)
    Guaranteed QoS   no QoS level: /kubepods.slice/kubepods-pod<uid>.slice/...  or  /kubepods/pod<uid>/...
    kind / nested    /kubelet.slice/kubelet-kubepods.slice/...,  /docker/<node id>/kubepods/...
    plain docker     /docker/<64hex>,  /system.slice/docker-<64hex>.scope
    podman           /machine.slice/libpod-<64hex>.scope[/container],  /libpod_parent/libpod-<64hex>
    nerdctl          /system.slice/nerdctl-<64hex>.scope
    lxc              /lxc/<name>,  /lxc.payload.<name>

The innermost container component wins (nested runtimes: kind nodes are docker containers), and a
path seen through a cgroup namespace (`/../../kubepods-...`) parses the same. Runtime monitors
(`crio-conmon-*`, `libpod-conmon-*`, `lxc.monitor.*`) are not the container: they map to the pod (if
any) without a container id.

Pure functions; `parse_cgroup` is memoized because the enricher asks about the same few thousand
cgroups over and over.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Iterator, NamedTuple


class ContainerRef(NamedTuple):
    runtime: str  # "containerd", "cri-o", "docker", "podman", "lxc"; "" = unknown (or host)
    container_id: str  # "" for host processes and for pod-level cgroups
    pod_uid: str | None  # Kubernetes pod uid, dashed; None outside kubepods

    @property
    def is_host(self) -> bool:
        return not self.container_id and self.pod_uid is None

    @property
    def in_pod(self) -> bool:
        return self.pod_uid is not None


HOST = ContainerRef("", "", None)

# Runtime prefixes of systemd scopes (and cgroupfs names), as the runtimes write them.
_SCOPE_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}
_HEX64 = r"[0-9a-fA-F]{64}"
# A pod uid as kubelet writes it: a UUID (dashes, or underscores in systemd unit names) or, for static
# pods, a 32-hex digest of the manifest.
_POD_UID = r"[0-9a-fA-F]{8}[-_]?[0-9a-fA-F]{4}[-_]?[0-9a-fA-F]{4}[-_]?[0-9a-fA-F]{4}[-_]?[0-9a-fA-F]{12}"

_POD_SYSTEMD = re.compile(rf"^(?:[\w.]*-)?kubepods(?:-[a-z]+)?-pod({_POD_UID})\.slice$")
_POD_CGROUPFS = re.compile(rf"^pod({_POD_UID})$")
_MONITOR = re.compile(rf"^(?:crio-conmon|libpod-conmon)-{_HEX64}(?:\.scope)?$|^lxc\.monitor[./]")
_SCOPE = re.compile(rf"^(cri-containerd|crio|docker|libpod|nerdctl)-({_HEX64})(?:\.scope)?$")
_BARE = re.compile(rf"^({_HEX64})$")
_LXC_PAYLOAD = re.compile(r"^lxc\.payload[./](.+)$")
# "hierarchy-ID:controller-list:path" lines of /proc/PID/cgroup
_PROC_LINE = re.compile(r"^\d+:[^:]*:(.*)$")

# Parent component of a bare 64-hex id -> runtime (the id alone does not say who made it).
_BARE_PARENT_RUNTIMES = {"docker": "docker", "libpod_parent": "podman", "moby": "docker"}


def normalize_pod_uid(uid: str) -> str:
    """Pod uid as the API server shows it: lower case, dashes (systemd unit names carry underscores)."""
    return uid.replace("_", "-").lower()


def parse_cgroup(path: bytes | str) -> ContainerRef:
    """(runtime, container_id, pod_uid) of a cgroup path, or HOST when it is no container's cgroup.

    Accepts one path (bytes or str) or the text of /proc/PID/cgroup (v1 or v2); with several
    hierarchies the most specific answer wins (a container beats a pod beats the host).
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        path = bytes(path).decode("utf-8", "surrogateescape")
    return _parse_text(path)


@lru_cache(maxsize=16384)
def _parse_text(text: str) -> ContainerRef:
    if "\n" not in text:
        line = _PROC_LINE.match(text)
        return _parse_path(line.group(1) if line else text)
    best = HOST
    for raw in text.splitlines():
        line = _PROC_LINE.match(raw)
        ref = _parse_path(line.group(1) if line else raw.strip())
        if ref.container_id:
            return ref
        if ref.pod_uid is not None and best.pod_uid is None:
            best = ref
    return best


def _parse_path(path: str) -> ContainerRef:
    runtime, container_id, pod_uid = "", "", None
    parent = ""
    in_lxc = False
    for part in path.split("/"):
        if not part or part == "..":
            continue
        pod = _POD_SYSTEMD.match(part) or _POD_CGROUPFS.match(part)
        if pod:
            # A (nested) pod starts a new context: anything before it is the node's own container.
            pod_uid, runtime, container_id = normalize_pod_uid(pod.group(1)), "", ""
        elif _MONITOR.match(part):
            runtime, container_id = "", ""
        elif m := _SCOPE.match(part):
            runtime, container_id = _SCOPE_RUNTIMES[m.group(1)], m.group(2).lower()
        elif m := _BARE.match(part):
            # Under a pod: kubelet's cgroupfs layout, any CRI runtime (the pod status says which).
            runtime = "" if pod_uid else _BARE_PARENT_RUNTIMES.get(parent, "")
            container_id = m.group(1).lower()
        elif m := _LXC_PAYLOAD.match(part):
            runtime, container_id = "lxc", m.group(1)
        elif in_lxc and not container_id:
            runtime, container_id = "lxc", part
        in_lxc = part == "lxc" and not container_id
        parent = part
    if not container_id and pod_uid is None:
        return HOST
    return ContainerRef(runtime, container_id, pod_uid)


def split_container_id(status_id: str) -> tuple[str, str]:
    """`containerd://<id>` (a pod status's containerID) -> ("containerd", "<id>"); "" -> ("", "")."""
    runtime, sep, cid = status_id.partition("://")
    if not sep:
        return "", status_id.lower()
    return runtime, cid.lower()


def iter_container_cgroups(root: str = "/sys/fs/cgroup") -> Iterator[tuple[str, int, ContainerRef]]:
    """Walk a cgroup hierarchy: (path relative to root, cgroup id, ref) for each container or pod cgroup.

    The cgroup id is the directory's inode number, which is what bpf_get_current_cgroup_id() returns
    on cgroup v2, so the collector can load per-pod kernel maps from a pod watch plus this walk.
    Sub-cgroups of a container (podman's `.../container`, systemd inside a container) are yielded
    too, with the container's ref: processes live there and carry their own cgroup id.
    """
    root = root.rstrip("/") or "/"
    for dirpath, _, _ in os.walk(root):
        rel = dirpath[len(root):] or "/"
        ref = parse_cgroup(rel)
        if not ref.is_host:
            try:
                yield rel, os.stat(dirpath).st_ino, ref
            except FileNotFoundError:  # the cgroup went away while walking
                continue
