"""Kubernetes-scoped enforcement: which local cgroups belong to pods a kill/deny rule's `scope:` selects.

The rule compiler turns each k8s.* / container.* condition of an enforcing rule into a ScopeTest. Here
each test is evaluated once per local container cgroup against the pod metadata of a node-scoped pod
watch (fimstream.k8s MetadataCache with node_name), and the result goes where the decision is made:

    kill   the kernel map enf_scope: (type, test, cgroup id) -> truth, for the cgroups whose truth differs
           from the test's default (its truth for a process in no known pod: host processes, pods not
           listed yet). The kernel reads the current task's cgroup id with bpf_get_current_cgroup_id().
    deny   the fanotify decision asks truth_for_pid(test, tid): the requester's cgroup from /proc.

Cgroup ids: bpf_get_current_cgroup_id() is the id of the task's cgroup in the unified (v2) hierarchy,
which is the inode number of its directory there. On a hybrid host (v1 controllers + v2 mounted at
/sys/fs/cgroup/unified, like this one) that is where pods must appear for scoped kill rules to find
them: kubelet with the systemd driver mirrors its slices there; with the cgroupfs driver on a v1 host the
v2 hierarchy holds no pod cgroups and scoped kill rules select nothing (reported in the health info).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from fimstream.containers import ContainerRef, iter_container_cgroups, parse_cgroup

log = logging.getLogger(__name__)
REFRESH_S = 2.0


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the unified (cgroup2) hierarchy is mounted: /sys/fs/cgroup or /sys/fs/cgroup/unified."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


class ScopeIndex:
    def __init__(self, cache=None, root: str | None = None):
        # fimstream.k8s.MetadataCache (node-scoped), or None: no cluster
        self.root = root if root is not None else cgroup2_root()
        self._cgroups: dict[int, tuple[str, ContainerRef]] = {}  # v2 cgroup id -> (path, ref)
        self._dirty = threading.Event()
        self._dirty.set()
        self.last_refresh = 0.0
        self.cache = None
        if cache is not None:
            self.set_cache(cache)

    def set_cache(self, cache) -> None:
        self.cache = cache
        cache.add_listener(lambda change: self._dirty.set())
        self._dirty.set()

    @property
    def mode(self) -> str:
        if self.cache is None:
            return "no cluster configured"
        return self.cache.mode if self.cache.mode != "host" else f"host mode ({self.cache.reason})"

    def refresh(self, force: bool = False) -> bool:
        """Re-walk the v2 hierarchy when pods changed or every REFRESH_S; True if the cgroups changed."""
        now = time.monotonic()
        if not force and not self._dirty.is_set() and now - self.last_refresh < REFRESH_S:
            return False
        self._dirty.clear()
        self.last_refresh = now
        found = {}
        if self.root:
            for rel, cgroup_id, ref in iter_container_cgroups(self.root):
                found[cgroup_id] = (rel, ref)
        changed = found != self._cgroups
        self._cgroups = found
        return changed or force

    def context(self, ref: ContainerRef) -> dict | None:
        if self.cache is None or ref.is_host:
            return None
        ctx = self.cache.resolve(ref).context
        return ctx.record() if ctx is not None else None

    def holds(self, test, ref: ContainerRef) -> bool:
        runtime = ref.runtime
        if self.cache is not None and ref.container_id:
            ctx = self.cache.by_container_id(ref.container_id)
            runtime = (ctx.runtime if ctx is not None and ctx.runtime else runtime)
        return test.holds(self.context(ref), ref.container_id, runtime)

    def truth(self, test) -> dict[int, bool]:
        """{cgroup id: truth} for the local container cgroups where the test differs from its default."""
        default = test.default
        out = {}
        for cgroup_id, (_, ref) in self._cgroups.items():
            v = self.holds(test, ref)
            if v != default:
                out[cgroup_id] = v
        return out

    def truth_for_pid(self, test, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as f:
                text = f.read()
        except OSError:
            return test.default
        v2 = next((line[3:] for line in text.splitlines() if line.startswith(b"0::")), None)
        ref = parse_cgroup(v2) if v2 is not None else parse_cgroup(text)
        if ref.is_host:  # a v1 host: the pod may only show in the v1 hierarchies (userspace can read them)
            ref = parse_cgroup(text)
        return self.holds(test, ref)

    def stats(self) -> dict:
        pods = {ref.pod_uid for _, ref in self._cgroups.values() if ref.pod_uid}
        return {"cgroup_root": self.root or "", "container_cgroups": len(self._cgroups), "pods": len(pods),
                "k8s": self.mode}


def cgroup_id(path: str) -> int:
    """The v2 cgroup id of a cgroup directory (what bpf_get_current_cgroup_id returns for its tasks)."""
    return os.stat(path).st_ino
