"""The process cache: pid -> what the kernel header does not carry (exe, args, cgroup path, container id,
ancestry). Seeded from /proc at start so processes older than the collector have context, then kept
current by the process sensor's exec/fork/exit records (Tetragon's procfs seeding + execve map idea).

Kernel records already carry pid/tid/ppid/uids/loginuid/session/comm/cgroup id/start time for every
event, so the cache only adds the slow-changing part. Entries of exited processes stay a while (their
children may still name them as ancestors, late records may still arrive), then are swept.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

from fimstream.collector import records as R
from fimstream.collector.event import (H_AUID, H_CGROUP, H_COMM, H_EGID, H_EUID, H_GID, H_PPID, H_SESSION, H_START,
                                       H_UID)

try:
    from fimstream.containers import parse_cgroup
except ImportError:  # the containers module is optional: key by host without it
    parse_cgroup = None

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK
ARGS_MAX = R.ARGS_MAX  # same bound as the kernel side
ANCESTORS_MAX = 8
KEEP_EXITED_S = 30.0


class ProcInfo:
    __slots__ = ("pid", "ppid", "start_ns", "uid", "gid", "euid", "egid", "auid", "sessionid", "comm", "exe",
                 "exe_ino", "exe_dev", "args", "args_truncated", "cgroup", "cgroup_id", "cgroup_text", "container_id",
                 "root_shared", "root_prefix", "blocks", "exited_at", "source")

    def __init__(self, pid: int, ppid: int = 0, start_ns: int = 0):
        self.pid = pid
        self.ppid = ppid
        self.start_ns = start_ns
        self.uid = self.gid = self.euid = self.egid = 0
        self.auid = self.sessionid = 0xFFFFFFFF
        self.comm = b""
        self.exe = b""
        self.exe_ino = self.exe_dev = 0
        self.args: list[bytes] = []
        self.args_truncated = False
        self.cgroup = b""
        self.cgroup_id = 0  # the v2 cgroup id `cgroup` is known to be current for (0: not known)
        self.cgroup_text = b""  # /proc/PID/cgroup as last read, kept current by cgroup_attach records
        self.container_id = ""
        self.root_shared: bool | None = None  # same root and mount namespace as the collector
        self.root_prefix: bytes | None = None  # chrooted inside our root and mount namespace: where its root is
        self.blocks: dict[bytes, bytes] = {}  # header signature -> encoded Process block (encoder.py)
        self.exited_at = 0.0
        self.source = ""  # "proc" (seeded), "exec", "fork", "header" (only what a record said)

    def inherit(self, parent: "ProcInfo") -> None:
        for name in ("exe", "exe_ino", "exe_dev", "args", "args_truncated", "cgroup", "cgroup_id", "cgroup_text", "container_id",
                     "root_shared", "root_prefix", "uid", "gid", "euid", "egid", "auid", "sessionid", "comm"):
            setattr(self, name, getattr(parent, name))

    def __repr__(self) -> str:
        return f"ProcInfo(pid={self.pid}, ppid={self.ppid}, exe={self.exe!r}, source={self.source})"


def split_args(raw: bytes, limit: int = ARGS_MAX) -> tuple[list[bytes], bool]:
    truncated = len(raw) > limit
    raw = raw[:limit]
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return (raw.split(b"\0") if raw else []), truncated


def pick_cgroup(text: bytes) -> bytes:
    """The cgroup path the schema stores: the v2 path, else the v1 pids or memory hierarchy."""
    v2 = v1 = b""
    for line in text.splitlines():
        hid, _, rest = line.partition(b":")
        controllers, _, path = rest.partition(b":")
        if hid == b"0" and not controllers:
            v2 = path
        elif not v1 and (b"pids" in controllers.split(b",") or b"memory" in controllers.split(b",")):
            v1 = path
    if v2 and v2 != b"/":
        return v2
    return v1 or v2


class CgroupPaths:
    """cgroup v2 id -> path. Every kernel record carries the current v2 cgroup id (the cgroup
    directory's inode), so the path derived from it is right even when a process changed cgroups after
    its exec and is gone before /proc could be read (a runtime moving a process into a container)."""

    NEGATIVE_TTL = 5.0

    def __init__(self, root: str | None = None):
        if root is None:
            root = next((r for r in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
                         if os.path.exists(os.path.join(r, "cgroup.procs"))), "")
        self.root = root.rstrip("/")
        self._paths: dict[int, bytes] = {}
        self._missing: dict[int, float] = {}

    def path(self, cgroup_id: int) -> bytes | None:
        hit = self._paths.get(cgroup_id)
        if hit is not None or not self.root:
            return hit
        if time.monotonic() - self._missing.get(cgroup_id, -1e9) < self.NEGATIVE_TTL:
            return None
        self._rescan()
        hit = self._paths.get(cgroup_id)
        if hit is None:
            self._missing[cgroup_id] = time.monotonic()
        return hit

    def _rescan(self) -> None:
        paths = {}
        for dirpath, _, _ in os.walk(self.root):
            try:
                paths[os.stat(dirpath).st_ino] = (dirpath[len(self.root):] or "/").encode()
            except FileNotFoundError:
                continue
        self._paths = paths


class ProcTable:
    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self.cgroups = CgroupPaths()
        self.procs: dict[int, ProcInfo] = {}
        self._self_root = self._root_key("self")
        self._self_mnt_ns = os.stat(f"{proc}/self/ns/mnt").st_ino
        self.stats = {"seeded": 0, "loaded": 0, "from_header": 0, "reused_pids": 0, "swept": 0, "cgroup_reads": 0,
                      "cgroup_moves": 0}

    # -------------------------------------------------------------------------------- /proc
    def _read(self, pid: int | str, name: str) -> bytes:
        with open(f"{self.proc}/{pid}/{name}", "rb") as f:
            return f.read()

    def _root_key(self, pid: int | str) -> tuple | None:
        try:
            st = os.stat(f"{self.proc}/{pid}/root")
            return st.st_dev, st.st_ino, os.readlink(f"{self.proc}/{pid}/ns/mnt")
        except OSError:
            return None

    def read_proc(self, pid: int) -> ProcInfo | None:
        """Everything /proc knows about a live process (None when it is gone)."""
        try:
            stat = self._read(pid, "stat")
            status = self._read(pid, "status")
        except OSError:
            return None
        lp, rp = stat.index(b"("), stat.rindex(b")")
        fields = stat[rp + 2:].split()
        info = ProcInfo(pid, int(fields[1]), int(fields[19]) * TICK_NS)
        info.comm = stat[lp + 1:rp]
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                info.uid, info.euid = (int(x) for x in line.split()[1:3])
            elif line.startswith(b"Gid:"):
                info.gid, info.egid = (int(x) for x in line.split()[1:3])
        for name, attr in (("loginuid", "auid"), ("sessionid", "sessionid")):
            try:
                setattr(info, attr, int(self._read(pid, name)))
            except (OSError, ValueError):
                pass
        try:
            info.exe = os.readlink(f"{self.proc}/{pid}/exe".encode())
            st = os.stat(f"{self.proc}/{pid}/exe")
            info.exe_ino, info.exe_dev = st.st_ino, st.st_dev
        except OSError:
            pass  # kernel thread, or a process that is exiting
        if info.exe.endswith(b" (deleted)"):
            info.exe = info.exe[:-10]
        try:
            info.args, info.args_truncated = split_args(self._read(pid, "cmdline"))
        except OSError:
            pass
        self._read_cgroup(info)
        key = self._root_key(pid)
        info.root_shared = None if key is None else key == self._self_root
        if key is not None and self._self_root is not None and not info.root_shared and key[2] == self._self_root[2]:
            try:  # chrooted in our mount namespace: the kernel names its root from ours
                info.root_prefix = os.readlink(f"{self.proc}/{pid}/root".encode())
            except OSError:
                pass
        info.source = "proc"
        return info

    def sync_cgroup(self, info: ProcInfo, cgroup_id: int) -> None:
        """Follow the kernel's v2 cgroup id: the path and container of where the process is now. A v2 path
        of "/" says nothing in a hybrid layout (containers live in the v1 hierarchies): keep /proc's."""
        if not cgroup_id or cgroup_id == info.cgroup_id:
            return
        info.cgroup_id = cgroup_id
        path = self.cgroups.path(cgroup_id)
        if not path:
            return
        if info.cgroup_text:
            self._move(info, 0, path)
        elif path != b"/":
            info.cgroup = path
            if parse_cgroup is not None:
                info.container_id = parse_cgroup(path).container_id

    def _read_cgroup(self, info: ProcInfo) -> bool:
        try:
            text = self._read(info.pid, "cgroup")
        except OSError:
            return False
        self.stats["cgroup_reads"] += 1
        self._set_cgroup_text(info, text)
        return True

    @staticmethod
    def _set_cgroup_text(info: ProcInfo, text: bytes) -> None:
        info.cgroup_text = text
        info.cgroup = pick_cgroup(text)
        if parse_cgroup is not None:
            info.container_id = parse_cgroup(text).container_id

    def _move(self, info: ProcInfo, hierarchy: int, path: bytes) -> bool:
        """Rewrite one hierarchy's line of the process's cgroup text (False: no such hierarchy there)."""
        prefix = b"%d:" % hierarchy
        lines = info.cgroup_text.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(prefix):
                controllers = line[len(prefix):].partition(b":")[0]
                lines[i] = prefix + controllers + b":" + path
                self._set_cgroup_text(info, b"\n".join(lines))
                return True
        return False

    def seed(self) -> int:
        n = 0
        for pid in self._pids():
            info = self.read_proc(pid)
            if info is not None:
                self.procs[pid] = info
                n += 1
        self.stats["seeded"] = n
        return n

    def _pids(self) -> Iterator[int]:
        for name in os.listdir(self.proc):
            if name.isdigit():
                yield int(name)

    # -------------------------------------------------------------------------------- lookups
    def get(self, pid: int, hdr: tuple | None = None) -> ProcInfo:
        """The cache entry of pid, loading it from /proc (or the record header) on a miss, and replacing it
        when the header's start time says the pid was reused."""
        info = self.procs.get(pid)
        if info is not None and hdr is not None and not self._same_process(info, hdr[H_START]):
            self.stats["reused_pids"] += 1
            info = None
        if info is None:
            info = self.read_proc(pid)
            if info is None or (hdr is not None and not self._same_process(info, hdr[H_START])):
                info = self._from_header(pid, hdr)
                self.stats["from_header"] += 1
            else:
                self.stats["loaded"] += 1
            self.procs[pid] = info
        return info

    @staticmethod
    def _same_process(info: ProcInfo, start_ns: int) -> bool:
        if info.start_ns == start_ns or not start_ns:
            return True
        if info.source == "proc" and abs(info.start_ns - start_ns) < 2 * TICK_NS:
            info.start_ns = start_ns  # /proc's clock ticks, now known to the nanosecond
            info.source = "proc+"
            return True
        return False

    def _from_header(self, pid: int, hdr: tuple | None) -> ProcInfo:
        info = ProcInfo(pid)
        if hdr is not None:
            info.ppid, info.start_ns = hdr[H_PPID], hdr[H_START]
            info.uid, info.gid, info.euid, info.egid = hdr[H_UID], hdr[H_GID], hdr[H_EUID], hdr[H_EGID]
            info.auid, info.sessionid = hdr[H_AUID], hdr[H_SESSION]
            info.comm = hdr[H_COMM].split(b"\0", 1)[0]
            parent = self.procs.get(info.ppid)
            if parent is not None:  # best guess for what a record cannot say
                info.cgroup, info.container_id, info.root_shared = parent.cgroup, parent.container_id, parent.root_shared
                info.root_prefix = parent.root_prefix
        info.source = "header"
        return info

    def root_of(self, pid: int) -> bytes | None:
        """Root prefix for path resolution once /proc/<pid> is gone: ours if it shared our root, the
        directory it chroot()ed into inside ours, None when unknown."""
        info = self.procs.get(pid)
        if info is None:
            return None
        if info.root_shared:
            return b""
        return info.root_prefix

    def ancestors(self, info: ProcInfo) -> list[ProcInfo]:
        out = []
        seen = {info.pid}
        ppid = info.ppid
        while ppid and ppid not in seen and len(out) < ANCESTORS_MAX:
            parent = self.procs.get(ppid)
            if parent is None:
                parent = self.read_proc(ppid)
                if parent is None:
                    break
                self.procs[ppid] = parent
            out.append(parent)
            seen.add(ppid)
            ppid = parent.ppid
        return out

    # ------------------------------------------------------------------------------ updates
    @staticmethod
    def _adopt_cgroup_id(info: ProcInfo, cgroup_id: int) -> None:
        """A cgroup text read from /proc stays current (moves since are applied to it): the v2 id of the
        process's next record is the one it describes."""
        if info.cgroup_text and not info.cgroup_id:
            info.cgroup_id = cgroup_id

    def on_fork(self, parent_pid: int, hdr: tuple, child_pid: int, child_start: int) -> ProcInfo:
        parent = self.get(parent_pid, hdr)
        self._adopt_cgroup_id(parent, hdr[H_CGROUP])  # the header is the parent's: the child starts there too
        child = ProcInfo(child_pid, parent_pid, child_start)
        child.inherit(parent)
        child.source = "fork"
        self.procs[child_pid] = child
        return child

    def on_exec(self, pid: int, hdr: tuple, exe: bytes, exe_ino: int, exe_dev: int, args: list[bytes],
                args_truncated: bool, mnt_ns: int = 0) -> ProcInfo:
        old = self.procs.get(pid)
        info = ProcInfo(pid, hdr[H_PPID], hdr[H_START])
        if old is not None:
            info.cgroup, info.container_id, info.root_shared = old.cgroup, old.container_id, old.root_shared
            info.root_prefix = old.root_prefix
            info.cgroup_id, info.cgroup_text = old.cgroup_id, old.cgroup_text
        info.uid, info.gid, info.euid, info.egid = hdr[H_UID], hdr[H_GID], hdr[H_EUID], hdr[H_EGID]
        info.auid, info.sessionid = hdr[H_AUID], hdr[H_SESSION]
        info.comm = hdr[H_COMM].split(b"\0", 1)[0]
        info.exe, info.exe_ino, info.exe_dev = exe, exe_ino, exe_dev
        info.args, info.args_truncated = args, args_truncated
        # Runtimes move a process into its container's cgroup before exec: the move was seen
        # (cgroup_attach records) unless the v2 id says the process was born elsewhere
        # (clone3 CLONE_INTO_CGROUP) or its cgroups were never read.
        cgroup_id = hdr[H_CGROUP]
        self._adopt_cgroup_id(info, cgroup_id)
        if not info.cgroup_text or info.cgroup_id != cgroup_id:
            if self._read_cgroup(info):
                info.cgroup_id = cgroup_id
            else:  # gone already: its v2 id still says where it was
                self.sync_cgroup(info, cgroup_id)
        if mnt_ns:  # from the kernel record, so it is known even when the process is already gone
            info.root_shared = mnt_ns == self._self_mnt_ns and info.root_shared is not False
        info.source = "exec"
        self.procs[pid] = info  # a new object: Process blocks cached on the old one are dropped with it
        return info

    def on_chroot(self, pid: int, hdr: tuple, new_root: bytes, path_flags: int) -> ProcInfo:
        """chroot() succeeded: `new_root` is the kernel's walk of the new root up to the old one (to the
        namespace root with PF_OUTSIDE_ROOT, i.e. ours when the process shares our mount namespace)."""
        info = self.get(pid, hdr)
        base = self.root_of(pid)
        if base is None or path_flags & (R.PF_TRUNCATED | R.PF_DEPTH | R.PF_UNRESOLVED):
            prefix = None
        elif path_flags & R.PF_OUTSIDE_ROOT:  # escaped the old root: named from the namespace root, ours
            prefix = new_root
        else:
            prefix = base.rstrip(b"/") + new_root.rstrip(b"/")
        info.root_shared = prefix == b""
        info.root_prefix = None if info.root_shared else prefix
        return info

    def on_exit(self, pid: int) -> None:
        info = self.procs.get(pid)
        if info is not None:
            info.exited_at = time.monotonic()

    def on_cgroup_attach(self, pid: int, hierarchy: int, cgroup_id: int, path: bytes) -> None:
        """A process moved to another cgroup in one hierarchy (its exec, or its next Process block, sees it)."""
        info = self.procs.get(pid)
        if info is None or not info.cgroup_text:
            return  # not known yet: /proc is read when it is needed
        if self._move(info, hierarchy, path):
            self.stats["cgroup_moves"] += 1
            if hierarchy == 0:
                info.cgroup_id = cgroup_id
            info.blocks = {}  # encoded Process blocks carry the old cgroup

    def sweep(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        gone = [pid for pid, info in self.procs.items() if info.exited_at and now - info.exited_at > KEEP_EXITED_S]
        for pid in gone:
            del self.procs[pid]
        self.stats["swept"] += len(gone)
        return len(gone)

    def __len__(self) -> int:
        return len(self.procs)
