"""`actions: [deny]` through fanotify permission events: the open (FAN_OPEN_PERM) or exec
(FAN_OPEN_EXEC_PERM) of a marked file waits in the kernel until this process answers FAN_ALLOW or
FAN_DENY (the caller then gets EPERM).

    deny = FanotifyDeny(emit=events.append, timeout_ms=250, on_timeout="allow")
    deny.apply(policy)            # marks where the deny paths are; an empty policy removes them
    deny.close()                  # pending requests are answered, the group is closed (the kernel allows the rest)

Threads: a reader takes events off the group and answers at once for this process's own threads (an
open of ours waiting on our own decision would deadlock) and the pipeline's pids; everything else goes
to one decider thread. The reader is also the watchdog: a request not answered `timeout_ms` after it
was read gets the timeout answer (allow by default: a slow or stuck decision never hangs the machine),
counted as a timeout; a late decision that would have denied is reported as an enforcement event
(outcome `timeout_allowed`), so a fail-open is visible.

The decision uses the compiled deny table (fimstream.rules.enforcement) with facts read from the
blocked requester: the file's path from the event fd (as this process's mount namespace sees it,
translated into the requester's root when that is a subtree of ours), the open flags and mode from
/proc/<tid>/syscall (openat, open, creat; openat2's struct open_how from /proc/<tid>/mem; unknown for
opens that have no syscall of their own, e.g. io_uring: such a request is `undecided` and gets the
timeout answer), uid/gid/euid/egid, comm and exe from /proc/<tid>, the pod from its cgroup.

Marks: an exact path gets an inode mark (any name of the inode, hard links and bind mounts included)
plus a FAN_EVENT_ON_CHILD mark on its directory (a file created or moved there later); a "dir/**"
prefix gets a FAN_MARK_FILESYSTEM mark on the filesystem holding the directory: every open on that
filesystem then waits for a decision here (tens of microseconds), which is the price of covering all
of its names. Marks are re-applied every REMARK_S seconds (a replaced inode gets its mark back).
"""
from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from fimstream.rules.enforcement import CommTest, EnforcementPolicy, PathTest, ScopeTest, ValueTest

log = logging.getLogger(__name__)

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x1, 0x2, 0x4
FAN_UNLIMITED_QUEUE, FAN_UNLIMITED_MARKS, FAN_REPORT_TID = 0x10, 0x20, 0x100
FAN_OPEN_PERM, FAN_OPEN_EXEC_PERM = 0x10000, 0x40000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_MARK_FLUSH, FAN_MARK_FILESYSTEM = 0x1, 0x2, 0x80, 0x100
FAN_ALLOW, FAN_DENY = 0x1, 0x2
FAN_Q_OVERFLOW = 0x4000
AT_FDCWD = -100
_META = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("<iI")
REMARK_S = 5.0
O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
# x86-64 syscall numbers of the opens whose arguments /proc/<tid>/syscall shows
_NR_OPEN, _NR_CREAT, _NR_OPENAT, _NR_OPENAT2 = 2, 85, 257, 437

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


class FanotifyError(OSError):
    pass


def fanotify_init() -> int:
    fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID | FAN_UNLIMITED_QUEUE
                             | FAN_UNLIMITED_MARKS, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise FanotifyError(e, f"fanotify_init(FAN_CLASS_CONTENT): {os.strerror(e)}")
    return fd


def fanotify_mark(fd: int, flags: int, mask: int, path: bytes) -> None:
    if _libc.fanotify_mark(fd, flags, mask, AT_FDCWD, path) < 0:
        e = ctypes.get_errno()
        raise FanotifyError(e, f"fanotify_mark({path!r}): {os.strerror(e)}")


@dataclass
class Request:
    fd: int
    tid: int
    mask: int
    t0: float  # monotonic time it was read
    answered: bool = False
    busy: bool = False  # the decider is reading through fd: it closes fd when done (the number must not be
    #                     reused under it when the watchdog answers first)
    facts: "Facts | None" = None  # what the reader already read (path, identity)


@dataclass
class Stats:
    events: int = 0
    allowed: int = 0
    denied: int = 0
    self_allowed: int = 0  # this process's own opens and the pipeline's pids: answered by the reader
    quick: int = 0  # answered by the reader from the file alone (no /proc reads)
    timeouts: int = 0
    undecided: int = 0
    late: int = 0  # decisions that arrived after the watchdog answered
    errors: int = 0
    decided: int = 0  # answered by a decision (quick or full), not by the watchdog
    answer_ns_total: int = 0  # from reading the request to answering it
    answer_ns_max: int = 0

    def as_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not k.startswith("answer_ns")}
        out["answer_us_avg"] = round(self.answer_ns_total / self.decided / 1000, 1) if self.decided else 0
        out["answer_us_max"] = round(self.answer_ns_max / 1000, 1)
        return out


@dataclass
class MarkPlan:
    inodes: set = field(default_factory=set)  # exact paths: inode mark + parent FAN_EVENT_ON_CHILD
    filesystems: set = field(default_factory=set)  # prefixes: FAN_MARK_FILESYSTEM on the fs holding them
    mask: int = 0

    @classmethod
    def of(cls, policy: EnforcementPolicy) -> "MarkPlan":
        plan = cls()
        for etype, table in policy.deny.items():
            # exec permission events also for open rules: the open execve makes of its file comes right
            # after one, which is how it is told apart from an open(2) (FanotifyDeny.decide)
            plan.mask |= FAN_OPEN_EXEC_PERM | (FAN_OPEN_PERM if etype == "open" else 0)
            for c in table.clauses:
                for i, t in enumerate(table.tests):
                    if c.pos >> i & 1 and isinstance(t, PathTest) and t.slot == "file":
                        plan.inodes |= t.exact
                        plan.filesystems |= t.prefixes
        return plan


def _existing_ancestor(path: bytes) -> bytes:
    p = path.rstrip(b"/") or b"/"
    while not os.path.isdir(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


class FanotifyDeny:
    name = "fanotify"

    def __init__(self, *, emit: Callable[[dict], None] = lambda ev: None, timeout_ms: int = 250,
                 on_timeout: str = "allow", ignored: Callable[[], set] = set, scope=None, host: str = "",
                 decide_hook: Callable[[Request], None] | None = None):
        if on_timeout not in ("allow", "deny"):
            raise ValueError("on_timeout must be 'allow' or 'deny'")
        self.emit = emit
        self.timeout = timeout_ms / 1000
        self.on_timeout = on_timeout
        self.ignored = ignored  # pids of the pipeline (answered allow by the reader)
        self.scope = scope  # ScopeIndex: truth of Kubernetes scope tests for a cgroup
        self.decide_hook = decide_hook  # tests: runs in the decider before each decision (a slow decider)
        self.host = host or os.uname().nodename
        self.stats = Stats()
        self.policy: EnforcementPolicy | None = None
        self.plan = MarkPlan()
        self.fd = -1
        self._pending: dict[int, Request] = {}
        self._lock = threading.Lock()
        self._queue: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._exec_open: dict[int, tuple[int, int]] = {}  # tid -> (dev, ino) of the file its exec is opening
        self._last_mark = 0.0
        self._me = os.getpid()
        self._tids: set[int] = set()  # this process's threads (listed from /proc/self/task)
        self._tids_at = 0.0
        self._tgids: dict[int, int] = {}  # requester tid -> tgid, for the pipeline's pids
        self.roots = RootCache()

    # ------------------------------------------------------------------------------------ lifecycle
    def apply(self, policy: EnforcementPolicy) -> None:
        """Mark what `policy` denies (and only that); start the threads on first use."""
        plan = MarkPlan.of(policy)
        self.policy = policy
        if not plan.mask:
            if self.fd >= 0:
                fanotify_mark(self.fd, FAN_MARK_FLUSH, 0, None)
                fanotify_mark(self.fd, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0, None)
            self.plan = plan
            return
        if self.fd < 0:
            self.fd = fanotify_init()
            for name, target in (("fanotify-reader", self._read_loop), ("fanotify-decider", self._decide_loop)):
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)
        else:  # marks of the previous policy go; requests in flight are decided with the new one
            fanotify_mark(self.fd, FAN_MARK_FLUSH, 0, None)
            fanotify_mark(self.fd, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0, None)
        self.plan = plan
        self._mark()

    def _mark(self) -> None:
        plan, fd = self.plan, self.fd
        for prefix in sorted(plan.filesystems):
            fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, plan.mask, _existing_ancestor(prefix))
        for path in sorted(plan.inodes):
            parent = os.path.dirname(path)
            if os.path.isdir(parent):
                fanotify_mark(fd, FAN_MARK_ADD, plan.mask | FAN_EVENT_ON_CHILD, parent)
            else:  # the directory may be created later: only a filesystem mark covers that
                fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, plan.mask, _existing_ancestor(parent))
            try:
                fanotify_mark(fd, FAN_MARK_ADD, plan.mask, path)
            except FanotifyError as e:
                if e.errno != errno.ENOENT:
                    raise
        self._last_mark = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        with self._lock:
            for req in list(self._pending.values()):
                self._respond(req, FAN_ALLOW)
        if self.fd >= 0:
            os.close(self.fd)  # the kernel allows whatever still waits on this group
            self.fd = -1

    @property
    def marks(self) -> dict:
        return {"inodes": len(self.plan.inodes), "filesystems": len(self.plan.filesystems)}

    # ---------------------------------------------------------------------------------- answering
    def _respond(self, req: Request, response: int) -> bool:
        """Answer once (the watchdog and the decider race for it); caller holds self._lock."""
        if req.answered:
            return False
        req.answered = True
        self._pending.pop(req.fd, None)
        try:
            os.write(self.fd, _RESPONSE.pack(req.fd, response))
        except OSError as e:
            self.stats.errors += 1
            log.error("fanotify response for tid %d: %s", req.tid, e)
        finally:
            if not req.busy:
                os.close(req.fd)
        if response == FAN_DENY:
            self.stats.denied += 1
        else:
            self.stats.allowed += 1
        return True

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        tick = max(0.001, min(0.05, self.timeout / 4))
        while not self._stop.is_set():
            try:
                ready = poller.poll(tick * 1000)
                if ready:
                    self._read_events()
                self._watchdog()
                if time.monotonic() - self._last_mark > REMARK_S and self.plan.mask:
                    self._mark()
            except Exception:  # noqa: BLE001 - the reader must survive anything: requests wait on it
                self.stats.errors += 1
                log.exception("fanotify reader")

    def _read_events(self) -> None:
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        now = time.monotonic()
        off = 0
        mine = []
        queued = 0
        while off + _META.size <= len(buf):
            length, _vers, _res, _mlen, mask, fd, tid = _META.unpack_from(buf, off)
            off += length
            if mask & FAN_Q_OVERFLOW or fd < 0:
                self.stats.errors += 1
                continue
            self.stats.events += 1
            req = Request(fd, tid, mask, now)
            if self._own(tid):
                mine.append(req)
                continue
            try:
                settled = self.quick(req)
            except OSError:
                settled = None  # the decider will try again and report
            if settled is not None:
                with self._lock:
                    self._respond(req, settled)
                self.stats.quick += 1
                self._answered(req)
                continue
            with self._lock:
                self._pending[fd] = req
            self._queue.append(req)
            queued += 1
        with self._lock:
            for req in mine:
                self.stats.self_allowed += 1
                self._respond(req, FAN_ALLOW)
        if queued:
            with self._wake:
                self._wake.notify()

    def _own(self, tid: int) -> bool:
        """One of this process's threads, or of the pipeline's pids. Cheap: it runs for every request."""
        now = time.monotonic()
        if now - self._tids_at > 10:  # tids get reused: start over now and then
            self._tids, self._tgids = set(), {}
            self._tids_at = 0.0
        if tid not in self._tids and now - self._tids_at > 0.5:
            self._tids = {int(t) for t in os.listdir(f"/proc/{self._me}/task")}
            self._tids_at = now
        if tid in self._tids:
            return True
        ignored = self.ignored()
        if not ignored or ignored == {self._me}:
            return False
        tgid = self._tgids.get(tid)
        if tgid is None:
            tgid = self._tgids[tid] = _tgid(tid)
        return tgid in ignored

    def _watchdog(self) -> None:
        if not self._pending:
            return
        deadline = time.monotonic() - self.timeout
        answer = FAN_DENY if self.on_timeout == "deny" else FAN_ALLOW
        with self._lock:
            for req in [r for r in self._pending.values() if r.t0 <= deadline]:
                if self._respond(req, answer):
                    self.stats.timeouts += 1
                    log.warning("fanotify decision for tid %d took over %d ms: answered %s", req.tid,
                                self.timeout * 1000, self.on_timeout)

    # ----------------------------------------------------------------------------------- deciding
    def _decide_loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait(0.5)
            while self._queue:
                req = self._queue.popleft()
                with self._lock:
                    if req.answered:
                        continue
                    req.busy = True
                try:
                    if self.decide_hook is not None:
                        self.decide_hook(req)
                    response, rule, facts, outcome = self.decide(req)
                except Exception:  # noqa: BLE001 - a request must never stay unanswered
                    log.exception("fanotify decision for tid %d", req.tid)
                    self.stats.errors += 1
                    response, rule, facts, outcome = FAN_ALLOW, None, None, None
                with self._lock:
                    answered = self._respond(req, response)
                    req.busy = False
                    os.close(req.fd)
                if answered:
                    self._answered(req)
                    if outcome is not None:
                        self._event(req, facts, rule, outcome)
                else:
                    self.stats.late += 1
                    if response == FAN_DENY and self.on_timeout == "allow":
                        self._event(req, facts, rule, "timeout_allowed")

    def _answered(self, req: Request) -> None:
        ns = int((time.monotonic() - req.t0) * 1e9)
        self.stats.decided += 1
        self.stats.answer_ns_total += ns
        self.stats.answer_ns_max = max(self.stats.answer_ns_max, ns)

    def quick(self, req: Request) -> int | None:
        """The reader's answer when the file alone settles it (most opens on a marked filesystem are not
        of denied paths): FAN_ALLOW, or None for the decider. No /proc reads of the requester here."""
        policy = self.policy
        kind = "exec" if req.mask & FAN_OPEN_EXEC_PERM else "open"
        facts = req.facts = Facts(req, kind, self.scope, self.roots)
        if kind == "exec":
            if len(self._exec_open) > 4096:
                self._exec_open.clear()
            self._exec_open[req.tid] = facts.identity()
        elif self._exec_open.pop(req.tid, None) == facts.identity():
            return FAN_ALLOW  # the open execve makes of the file it runs: an exec, not an open
        table = policy.deny.get(kind) if policy else None
        if table is None:
            return FAN_ALLOW
        rule, undecided = table.decide(lambda t: facts.path_test(t) if isinstance(t, PathTest) and t.slot == "file"
                                       else None)
        if rule is None and not undecided:
            return FAN_ALLOW
        return None

    def decide(self, req: Request) -> tuple[int, str | None, "Facts | None", str | None]:
        """(FAN_ALLOW or FAN_DENY, the rule concerned, the facts read, outcome to report or None)."""
        if req.facts is None and self.quick(req) is not None:
            return FAN_ALLOW, None, req.facts, None
        facts = req.facts
        table = self.policy.deny.get(facts.kind)
        rule, undecided = table.decide(facts)
        if rule is not None:
            return FAN_DENY, rule, facts, "denied"
        if undecided:  # e.g. the open flags of an io_uring open: the timeout answer, reported
            self.stats.undecided += 1
            concerned = next((c.rule for c in table.clauses if facts.could_match(table, c)), None)
            if self.on_timeout == "deny":
                return FAN_DENY, concerned, facts, "undecided_denied"
            return FAN_ALLOW, concerned, facts, "undecided_allowed"
        return FAN_ALLOW, None, facts, None

    def _event(self, req: Request, facts: "Facts | None", rule: str | None, outcome: str) -> None:
        from fimstream.events import raw_event
        from fimstream.schemas.codec import text

        kind = "exec" if req.mask & FAN_OPEN_EXEC_PERM else "open"
        path = facts.path if facts is not None else b""
        proc = facts.process() if facts is not None else {"pid": req.tid, "tid": req.tid, "comm": "", "exe": b""}
        attrs = {"action": "deny", "rule_id": rule or "", "outcome": outcome, "event_type": kind,
                 "syscall": "fanotify:" + ("open_exec_perm" if kind == "exec" else "open_perm"), "path": text(path),
                 "pid": str(proc.get("pid", req.tid)), "tid": str(req.tid), "backend": "fanotify",
                 "effect": "prevented: EPERM" if outcome in ("denied", "undecided_denied", "timeout_denied")
                 else "allowed"}
        if facts is not None and facts.flags_known:
            attrs["flags"] = oct(facts.values.get("flags", 0))
        self.emit(raw_event("enforcement", path=path, syscall=attrs["syscall"], attrs=attrs, process=proc,
                            host=self.host, retval=-errno.EPERM if attrs["effect"] != "allowed" else 0))


def _tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


class RootCache:
    """The root directory of requesters (chroot, container rootfs) as this process sees it, per tid, kept
    for a second: a readlink of /proc/<tid>/root per request costs more than the rest of the decision."""

    TTL = 1.0

    def __init__(self):
        self._roots: dict[int, bytes] = {}
        self._at = time.monotonic()

    def get(self, tid: int) -> bytes:
        now = time.monotonic()
        if now - self._at > self.TTL:
            self._roots.clear()
            self._at = now
        root = self._roots.get(tid)
        if root is None:
            try:
                root = os.readlink(f"/proc/{tid}/root".encode())
            except OSError:
                root = b"/"
            self._roots[tid] = root
        return root


class Facts:
    """What the decision reads about one blocked request, read lazily and once."""

    def __init__(self, req: Request, kind: str, scope, roots: RootCache | None = None):
        self.req, self.kind, self.scope = req, kind, scope
        self.roots = roots or RootCache()
        self._path: bytes | None = None
        self._status: dict | None = None
        self._values: dict | None = None
        self.flags_known = False
        self._exe: bytes | None = None

    # -- the file
    @property
    def path(self) -> bytes:
        if self._path is None:
            p = os.readlink(f"/proc/self/fd/{self.req.fd}".encode())
            root = self.roots.get(self.req.tid)
            if root != b"/" and p.startswith(root + b"/"):
                p = p[len(root):]  # the requester lives in a subtree of ours (chroot, container rootfs)
            self._path = p
        return self._path

    def identity(self) -> tuple[int, int]:
        st = os.fstat(self.req.fd)
        return st.st_dev, st.st_ino

    def path_test(self, t: PathTest) -> bool:
        return t.holds(self.path)

    # -- the requester
    def _read_status(self) -> dict:
        if self._status is None:
            out = {}
            try:
                with open(f"/proc/{self.req.tid}/status", "rb") as f:
                    for line in f:
                        key, _, rest = line.partition(b":")
                        if key in (b"Uid", b"Gid", b"Tgid", b"PPid", b"Name"):
                            out[key.decode()] = rest.split()
            except OSError:
                pass
            self._status = out
        return self._status

    @property
    def values(self) -> dict:
        if self._values is None:
            st = self._read_status()
            v = {}
            if "Uid" in st:
                v["uid"], v["euid"] = int(st["Uid"][0]), int(st["Uid"][1])
            if "Gid" in st:
                v["gid"], v["egid"] = int(st["Gid"][0]), int(st["Gid"][1])
            if self.kind == "open":
                args = self._open_args()
                if args is not None:
                    v["flags"], v["mode"] = args
                    self.flags_known = True
            self._values = v
        return self._values

    def _open_args(self) -> tuple[int, int] | None:
        """(flags, mode) of the open the requester is blocked in, from /proc/<tid>/syscall."""
        try:
            with open(f"/proc/{self.req.tid}/syscall", "rb") as f:
                parts = f.read().split()
        except OSError:
            return None
        if not parts or not parts[0].isdigit():
            return None
        nr, args = int(parts[0]), [int(a, 16) for a in parts[1:7]]
        if nr == _NR_OPENAT:
            return args[2] & 0xFFFFFFFF, args[3] & 0xFFFFFFFF
        if nr == _NR_OPEN:
            return args[1] & 0xFFFFFFFF, args[2] & 0xFFFFFFFF
        if nr == _NR_CREAT:
            return O_CREAT | O_WRONLY | O_TRUNC, args[1] & 0xFFFFFFFF
        if nr == _NR_OPENAT2:
            try:
                with open(f"/proc/{self.req.tid}/mem", "rb", buffering=0) as mem:
                    mem.seek(args[2])
                    flags, mode, _resolve = struct.unpack("<QQQ", mem.read(24))
                return flags, mode
            except (OSError, struct.error):
                return None
        return None  # io_uring and other kernel-side opens: the flags are not visible here

    @property
    def comm(self) -> str | None:
        st = self._read_status()
        return st["Name"][0].decode("utf-8", "replace") if st.get("Name") else None

    @property
    def exe(self) -> bytes | None:
        if self._exe is None:
            try:
                self._exe = os.readlink(f"/proc/{self.req.tid}/exe".encode())
            except OSError:
                return None
        return self._exe

    def __call__(self, test) -> bool | None:
        if isinstance(test, PathTest):
            if test.slot == "file":
                return test.holds(self.path)
            exe = self.exe
            return None if exe is None else test.holds(exe)
        if isinstance(test, ValueTest):
            v = self.values.get(test.value)
            return None if v is None else test.holds(v)
        if isinstance(test, CommTest):
            comm = self.comm
            return None if comm is None else test.holds(comm)
        if isinstance(test, ScopeTest):
            if self.scope is None:
                return test.default
            return self.scope.truth_for_pid(test, self.req.tid)
        return None

    def could_match(self, table, clause) -> bool:
        """No known fact contradicts this clause."""
        for i, t in enumerate(table.tests):
            v = self(t)
            if v is not None and ((clause.pos >> i & 1 and not v) or (clause.neg >> i & 1 and v)):
                return False
        return True

    def process(self) -> dict:
        """The requester as a RawEvent Process (the enricher finds its pod from the cgroup)."""
        st = self._read_status()
        v = self.values
        out = {"pid": int(st["Tgid"][0]) if "Tgid" in st else self.req.tid, "tid": self.req.tid,
               "ppid": int(st["PPid"][0]) if "PPid" in st else 0, "comm": self.comm or "", "exe": self.exe or b""}
        for k in ("uid", "gid", "euid", "egid"):
            if k in v:
                out[k] = v[k]
        cgroup = cgroup_v2_path(self.req.tid)
        if cgroup is not None:
            out["cgroup"] = cgroup
        return out


def cgroup_v2_path(pid: int) -> bytes | None:
    """The unified-hierarchy line of /proc/<pid>/cgroup ("0::/path"), or None."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    return line[3:].rstrip(b"\n")
    except OSError:
        pass
    return None
