"""The live rule harness: real actions on this machine through the real pipeline, in one process.

    kernel (collector's eBPF sensors, the default pack's kernel policy loaded)
      -> Collector decoders + userspace admit      (services/collector)
      -> RawEncoder, one Avro batch                (what EventSink publishes)
      -> BatchEnricher, host-mode MetadataResolver (services/enricher)
      -> codec decode -> Detection.evaluate        (services/detector)
      -> alerts

Only Kafka is left out: its framing is the same codec the batch goes through here. `Pipeline.trigger(action)`
runs the action, then keeps the events of this process and of every process it forked during the action (as
the collector's own fork records saw them), so background activity on the shared machine never matters.
Each trigger gets a fresh Detection, so correlation state never leaks from one test to the next.

Process helpers: `in_child(fn, ...)` runs fn in a forked child, optionally in a private mount namespace
(tmpfs or an overlay over a real directory: writes stay in memory and vanish with the namespace), in a
container-like cgroup, or detached (reparented to init before it runs, so its ancestry does not carry the
test runner: `make test` would otherwise put `make`, a build tool, in every ancestry).
"""
from __future__ import annotations

import ctypes
import os
import select
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from fimstream.collector.encoder import RawEncoder
from fimstream.config import Settings
from fimstream.detector.service import Detection
from fimstream.enricher.enrich import BatchEnricher
from fimstream.enricher.metadata import MetadataResolver
from fimstream.k8s import K8sSettings
from fimstream.schemas.codec import Codecs, text

ME = os.getpid()
TRUE = os.path.realpath("/bin/true")
RULES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "rules")


def unique(prefix: str = "fimstream-live") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------------------ registry
# rule id -> test names; filled at import time by @fires / @quiet, read by test_coverage.py
FIRES: dict[str, list[str]] = {}
QUIET: dict[str, list[str]] = {}


def _register(table: dict, rule_id: str):
    def mark(fn):
        table.setdefault(rule_id, []).append(f"{fn.__module__}.{fn.__name__}")
        return fn
    return mark


def fires(rule_id: str):
    """This test performs the real action and asserts that `rule_id` fires."""
    return _register(FIRES, rule_id)


def quiet(rule_id: str):
    """This test performs a benign look-alike and asserts that `rule_id` stays quiet."""
    return _register(QUIET, rule_id)


# ------------------------------------------------------------------------------------------ pipeline
@dataclass
class Outcome:
    result: Any
    events: list[dict]  # enriched events of the action's process tree, decoded
    alerts: list[dict]
    raw_count: int = 0

    def of(self, rule_id: str, path: str | bytes | None = None) -> list[dict]:
        p = os.fsencode(path) if path is not None else None
        return [a for a in self.alerts if a["rule_id"] == rule_id and (p is None or touches(a["event"], p))]

    def describe(self) -> str:
        lines = [f"{len(self.events)} events, alerts: {sorted({a['rule_id'] for a in self.alerts})}"]
        for e in self.events:
            if e["event_type"] in ("fork", "exit"):
                continue
            f, t = e.get("file"), e.get("target")
            what = text(f["path"]) if f else ""
            if t and t["path"]:
                what += f" -> {text(t['path'])}"
            if e.get("net"):
                what += f" {e['net']['remote_addr']}:{e['net']['remote_port']}"
            lines.append(f"  {e['event_type']:8} {e['syscall']:10} ret={e['retval']} {what}  "
                         f"[{text(e['process']['exe'])} pid {e['process']['pid']} uid {e['process']['uid']}"
                         f"{' ctr ' + e['container_id'][:12] if e.get('container_id') else ''}]")
        return "\n".join(lines)


def touches(event: dict, path: bytes) -> bool:
    return any(event.get(k) and event[k]["path"] == path for k in ("file", "target"))


def assert_fires(outcome: Outcome, rule_id: str, path: str | bytes | None = None) -> list[dict]:
    hits = outcome.of(rule_id, path)
    assert hits, f"{rule_id} did not fire{' on ' + os.fsdecode(path) if path else ''}\n{outcome.describe()}"
    return hits


def assert_quiet(outcome: Outcome, rule_id: str) -> None:
    hits = outcome.of(rule_id)
    assert not hits, f"{rule_id} fired on a benign look-alike: {[a['message'] for a in hits]}\n{outcome.describe()}"


class Pipeline:
    def __init__(self, collector, rules, kernel_policy: bool):
        self.collector = collector
        self.rules = rules
        self.kernel_policy = kernel_policy
        self.codecs = Codecs()
        host = socket.gethostname()
        self.encoder = RawEncoder(host, collector.procs, collector.boot_offset_ns)
        resolver = MetadataResolver(Settings(host=host), K8sSettings(enabled="off"))
        assert resolver.mode == "host"
        self.enricher = BatchEnricher(self.codecs, resolver.resolve)
        self.parents: dict[int, int] = {}  # child pid -> parent pid, from the collector's fork records
        self._bodies: list[bytes] | None = None
        procs = collector.procs
        on_fork = procs.on_fork

        def record_fork(parent_pid, hdr, child_pid, child_start):  # the tree as the kernel reported it
            if self._bodies is not None:
                self.parents[child_pid] = parent_pid
            return on_fork(parent_pid, hdr, child_pid, child_start)

        procs.on_fork = record_fork

    def mine(self, pid: int) -> bool:
        for _ in range(64):
            if pid == ME:
                return True
            pid = self.parents.get(pid)
            if pid is None:
                return False
        return False

    def _sink(self, ev) -> None:
        if not self.mine(ev.pid):
            return
        # the collector reads /proc for its process cache from this very process: not the test's doing
        if ev.pid == ME and ev.file is not None and ev.file.path.startswith((b"/proc/", b"/sys/fs/cgroup")):
            return
        # encoded at once, like EventSink: the Process block must be the one in force at this record
        info, block = self.encoder.process_for(ev)
        self._bodies.append(self.encoder.encode(ev, block))

    def trigger(self, action: Callable[[], Any], settle: float = 0.05) -> Outcome:
        c = self.collector
        c.on_event = lambda ev: None
        c.drain()  # whatever happened before the action
        self.parents = {}
        self._bodies = bodies = []
        c.on_event = self._sink
        try:
            result = action()
            time.sleep(settle)
            c.drain()
        finally:
            c.on_event = lambda ev: None
            self._bodies = None
        if not bodies:
            return Outcome(result, [], [], 0)
        enriched, n = self.enricher.enrich(self.codecs.raw.frame_encoded(bodies))
        events = self.codecs.enriched.decode_batch(enriched)
        alerts = Detection(self.rules).evaluate(events)
        return Outcome(result, events, alerts, n)


# ------------------------------------------------------------------------------------- processes
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE, MS_BIND = 0x4000, 1 << 18, 4096


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    enc = lambda s: os.fsencode(s) if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {fstype} on {target}")


@dataclass
class Namespace:
    """A private mount namespace: `tmpfs` dirs get an empty tmpfs, `overlay` dirs an overlay whose lower
    layer is the real directory (everything stays visible; every change lands in a tmpfs upper layer).
    `scratch` is a host directory for the overlay's upper/work layers (mounted over by a tmpfs in the
    namespace; files written there before the overlay is mounted make no event under the target).
    Nothing reaches the host's mounts: / is made recursively private first."""
    scratch: str
    tmpfs: tuple[str, ...] = ()
    overlay: tuple[str, ...] = ()
    upper: dict = field(default_factory=dict)  # overlay target -> {relative path: bytes}, there from the start

    def enter(self) -> None:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for target in self.tmpfs:
            mount("fimstream-live", target, "tmpfs", 0, "mode=755")
        if self.overlay:
            mount("fimstream-live", self.scratch, "tmpfs", 0, "mode=700")
            for i, target in enumerate(self.overlay):
                upper, work = f"{self.scratch}/u{i}", f"{self.scratch}/w{i}"
                os.mkdir(upper)
                os.mkdir(work)
                for rel, data in self.upper.get(target, {}).items():
                    os.makedirs(os.path.dirname(f"{upper}/{rel}"), exist_ok=True)
                    with open(f"{upper}/{rel}", "wb") as f:
                        f.write(data)
                mount("overlay", target, "overlay", 0, f"lowerdir={target},upperdir={upper},workdir={work}")


@dataclass
class Container:
    """A container as the pipeline knows one: a cgroup named like a runtime's scope (docker-<64 hex>.scope
    under a cgroup of our own in the v2 hierarchy), which the enricher turns into a container id."""
    root: str = field(default_factory=lambda: next(  # the v2 hierarchy: hybrid layout, or unified
        r for r in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup") if os.path.exists(f"{r}/cgroup.procs")))
    id: str = field(default_factory=lambda: (uuid.uuid4().hex * 2))
    parent: str = field(default_factory=lambda: unique())

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.parent, f"docker-{self.id}.scope")

    def create(self) -> None:
        os.makedirs(self.path)

    def join(self) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("0")  # the writer itself

    def remove(self) -> None:
        for d in (self.path, os.path.join(self.root, self.parent)):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # a process still exiting
                    time.sleep(0.02)


class ChildFailed(AssertionError):
    pass


def in_child(fn: Callable[[], Any], *, ns: Namespace | None = None, container: Container | None = None,
             detach: bool = False, timeout: float = 30.0) -> Callable[[], tuple[int, int]]:
    """An action: fn() in a forked child (fn may exec). The action returns (pid that ran fn, wait status);
    a Python error in the child is raised here with its traceback."""

    def action() -> tuple[int, int]:
        r, w = os.pipe()  # close-on-exec: a successful exec closes the child's end
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 0
            try:
                os.close(r)
                if detach:
                    intermediate = os.getpid()
                    if os.fork() != 0:
                        os._exit(0)
                    while os.getppid() == intermediate:  # until reparented (to init)
                        time.sleep(0.001)
                os.write(w, f"{os.getpid()}\n".encode())
                if container is not None:
                    container.join()
                if ns is not None:
                    ns.enter()
                fn()
            except BaseException:  # noqa: BLE001 - reported to the parent
                os.write(w, traceback.format_exc().encode())
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        deadline = time.monotonic() + timeout
        out = b""
        try:
            while True:  # until every holder of the write end exited or exec'd
                ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    raise ChildFailed(f"child {pid} did not finish in {timeout} s (killed)")
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                out += chunk
        finally:
            os.close(r)
        line, _, err = out.partition(b"\n")
        worker = int(line) if line.strip() else pid
        _, status = os.waitpid(pid, 0)
        if detach:
            status = _wait_foreign(worker, deadline)
        if err.strip():
            raise ChildFailed(f"child {worker} failed:\n{err.decode(errors='replace')}")
        return worker, status

    return action


def _wait_foreign(pid: int, deadline: float) -> int:
    """Wait for a process that is not our child (reparented to init) through a pidfd. Its exit status
    is not ours to collect: 0."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return 0
    try:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(fd)
    return 0


def run(*argv: str, env: dict | None = None, **kw) -> Callable[[], tuple[int, int]]:
    """An action: exec argv in a child (no shell in between; argv[0] is the program path)."""
    def go():
        os.execve(argv[0], list(argv), env if env is not None else dict(os.environ))
    return in_child(go, **kw)


def copy_tool(src: str, directory: str, name: str) -> str:
    """A copy of a system binary under another name (its exe basename is what rules read)."""
    dst = os.path.join(directory, name)
    shutil.copy2(os.path.realpath(src), dst)
    return dst


def remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
