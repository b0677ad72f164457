"""The kernel's per-thread snapshot of credentials and namespaces (fimstream.h `thread_snaps`), seeded from
/proc for the threads that existed before the collector: the kernel takes a new thread's snapshot at fork
and refreshes it at exec and after each privilege syscall, but has no record of threads forked before its
programs were attached. Seeding runs after they are, and never overwrites what the kernel wrote (a thread
that forked or changed credentials since is already there, fresher than /proc)."""
from __future__ import annotations

import ctypes as ct
import errno
import logging
import os
import struct

log = logging.getLogger(__name__)

# struct thread_snap: uid euid suid fsuid gid egid sgid fsgid, cap_inh cap_perm cap_eff, ns[8], root_mnt,
# root_dentry (0: /proc gives no kernel pointers; a chroot then walks the new root up to its namespace's)
THREAD_SNAP = struct.Struct("<8I3Q8I2Q")
assert THREAD_SNAP.size == 104
# the order of thread_snap.ns and their /proc/<pid>/task/<tid>/ns names
NS_NAMES = ("mnt", "uts", "ipc", "pid_for_children", "net", "time_for_children", "cgroup", "user")
BPF_NOEXIST = 1


def read_thread(task_dir: str) -> bytes | None:
    """A thread's snapshot from /proc (None if it is gone)."""
    fields: dict[str, list[str]] = {}
    try:
        with open(f"{task_dir}/status", "rb") as f:
            for line in f:
                key, _, value = line.decode("latin-1").partition(":")
                if key in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff"):
                    fields[key] = value.split()
    except OSError:
        return None
    if len(fields) < 5:
        return None
    ns = []
    for name in NS_NAMES:
        try:
            ns.append(os.stat(f"{task_dir}/ns/{name}").st_ino)
        except OSError:  # a namespace kind this kernel lacks (time before 5.6): 0, as the kernel side reads it
            ns.append(0)
    uid, gid = [int(x) for x in fields["Uid"]], [int(x) for x in fields["Gid"]]
    caps = [int(fields[k][0], 16) for k in ("CapInh", "CapPrm", "CapEff")]
    return THREAD_SNAP.pack(*uid, *gid, *caps, *ns, 0, 0)


def seed(bpf, proc: str = "/proc") -> dict[str, int]:
    """Insert every thread /proc lists that the kernel map does not hold yet. Returns counts."""
    from bcc.libbcc import lib

    table = bpf.get_table(b"thread_snaps")
    counts = {"seeded": 0, "present": 0, "gone": 0, "failed": 0}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            raw = read_thread(f"{proc}/{pid}/task/{tid}")
            if raw is None:
                counts["gone"] += 1
                continue
            key, leaf = table.Key(int(tid)), table.Leaf.from_buffer_copy(raw)
            rc = lib.bpf_update_elem(table.map_fd, ct.byref(key), ct.byref(leaf), BPF_NOEXIST)
            if rc == 0:
                counts["seeded"] += 1
            elif errno.EEXIST in (-rc, ct.get_errno()):  # the kernel took it since (fork, exec, a credential change)
                counts["present"] += 1
            else:
                counts["failed"] += 1
    if counts["failed"]:
        log.warning("thread snapshots: %d threads could not be seeded (the map holds at most its size)",
                    counts["failed"])
    return counts
