"""Enforcement sensor, userspace half: loads the kill decision tables (fimstream.rules.enforcement) into the
maps of bpf/enforce_sensor.c, attaches only the hooks the loaded rules need, and decodes the kernel's
RK_ENFORCE records into `enforcement` events.

Its programs share tracepoints with the file and process sensors. bcc keeps one perf fd per tracepoint
name (`BPF.tracepoint_fds[tp]`), so attaching a second program through `attach_tracepoint` would drop
the first one's fd from bcc's books (and `detach_tracepoint` would then close the wrong one): this
sensor attaches through libbcc directly and keeps its own fds.
"""
from __future__ import annotations

import ctypes as ct
import logging
import os
import re
import threading

from fimstream.collector import records as R
from fimstream.collector.event import TYPE_INDEX, Event, FileRef
from fimstream.collector.sensor import Hook, Sensor, SensorError
from fimstream.rules.enforcement import (KILL_TYPES, PREVENTED, STRING_PATH_TYPES, VALUES, CommTest,
                                         EnforcementPolicy, PathTest, ScopeTest, TypeTable, ValueTest)
from fimstream.schemas.codec import text

log = logging.getLogger(__name__)

ENF_TYPES = ("open", "create", "write", "truncate", "unlink", "rmdir", "rename", "chmod", "chown", "mmap", "exec")
ET = {t: i for i, t in enumerate(ENF_TYPES)}
assert set(ENF_TYPES) == set(KILL_TYPES)
ENF_SYSCALLS = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "sendfile64", "copy_file_range", "splice",
                "mmap", "truncate", "ftruncate", "unlinkat", "unlink", "rmdir", "renameat2", "renameat", "rename",
                "fchmodat", "fchmodat2", "chmod", "fchmod", "fchownat", "chown", "lchown", "fchown", "openat",
                "open", "creat", "openat2")
ESC = {name: i + 1 for i, name in enumerate(ENF_SYSCALLS)}  # 0: exec (sched_process_exec, no syscall)
SLOT_INDEX = {"file": 0, "target": 1, "exe": 2}
ELK_EXACT, ELK_PREFIX, ELK_NAME = 1, 2, 4
OP_INDEX = {op: i for i, op in enumerate(("==", "!=", "<", "<=", ">", ">="))}
COUNTERS = ("checks", "kills", "signal_failed", "no_path")
LIMITS = dict(ENF_NTYPES=16, ENF_NTESTS=64, ENF_NCLAUSES=64, ENF_KEY=256, ENF_PREFIX=254, ENF_BUF=8192,
              ENF_PATHS_MAX=4096, ENF_SCOPE_MAX=65536)

# which enforcement types each hook serves (a hook is attached while one of its types has clauses)
_WRITE = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "sendfile64", "copy_file_range", "splice")
HOOK_TYPES: dict[str, tuple[str, ...]] = {
    **{f"syscalls:sys_enter_{s}": ("write",) for s in _WRITE},
    "syscalls:sys_enter_mmap": ("mmap",),
    "syscalls:sys_enter_truncate": ("truncate",), "syscalls:sys_enter_ftruncate": ("truncate",),
    "syscalls:sys_enter_unlinkat": ("unlink", "rmdir"), "syscalls:sys_enter_unlink": ("unlink",),
    "syscalls:sys_enter_rmdir": ("rmdir",),
    **{f"syscalls:sys_enter_{s}": ("rename",) for s in ("renameat2", "renameat", "rename")},
    **{f"syscalls:sys_enter_{s}": ("chmod",) for s in ("fchmodat", "fchmodat2", "chmod", "fchmod")},
    **{f"syscalls:sys_enter_{s}": ("chown",) for s in ("fchownat", "chown", "lchown", "fchown")},
    **{f"syscalls:sys_{d}_{s}": ("open", "create") for s in ("openat", "open", "creat", "openat2")
       for d in ("enter", "exit")},
    "sched:sched_process_exec": ("exec",),
}
_ENF_RE = re.compile(r"^ENF\((\w+),\s*(\w+)\)", re.M)
ENFORCE_BODY = R.HEADER_SIZE, "<IIIIIHHQQ"  # action, rule, et, sc, gen, path_len, target_len, flags, mode
T_ENFORCEMENT = TYPE_INDEX["enforcement"]


def effect(event_type: str) -> str:
    """What SIGKILL left done, in one word for the event's attrs."""
    if event_type in PREVENTED:
        return "prevented"
    if event_type == "open":
        return "open_done_fd_unused"
    return "not_prevented"


class EnforceSensor(Sensor):
    name = "enforce"
    source = "enforce_sensor.c"

    def __init__(self):
        super().__init__()
        self.decoders = {R.RK_ENFORCE: self.decode}
        self.bpf = None
        self._fns: dict[str, object] = {}
        self._decide = None
        self._perf_fds: dict[str, int] = {}  # tracepoint -> perf event fd (ours, not bcc's)
        self._lock = threading.Lock()
        self.generation = 0
        self._rule_ids: dict[int, list[str]] = {}  # generation -> rule ids by index (kernel records)
        self.policy: EnforcementPolicy | None = None
        self.kill_records = 0
        self.active_types: list[str] = []
        self._counters: dict[str, int] = {name: 0 for name in COUNTERS}

    # ------------------------------------------------------------------------------ build, load
    @staticmethod
    def parse_hooks(text_: str) -> list[Hook]:
        return [Hook(False, f"{c}:{e}", f"enf__{c}__{e}") for c, e in _ENF_RE.findall(text_)]

    def constants(self, btf) -> dict[str, int]:
        out = dict(LIMITS)
        out.update({f"ET_{t.upper()}": i for t, i in ET.items()})
        out.update({f"ESC_{s.upper()}": i for s, i in ESC.items()})
        out.update({f"EV_{v.upper()}": i for i, v in enumerate(VALUES)})
        out.update({"EOP_EQ": 0, "EOP_NE": 1, "EOP_LT": 2, "EOP_LE": 3, "EOP_GT": 4, "EOP_GE": 5})
        out.update(ELK_EXACT=ELK_EXACT, ELK_PREFIX=ELK_PREFIX, ELK_NAME=ELK_NAME, ES_FILE=0, ES_TARGET=1, ES_EXE=2)
        out.update({f"ENC_{c.upper()}": i for i, c in enumerate(COUNTERS)}, ENC_N=len(COUNTERS))
        return out

    def load(self, bpf) -> None:
        """Nothing is verified or attached until a policy needs it (apply): the verifier takes ~0.3 s
        per program here, and most rule sets kill on a few event types, if any."""
        self.bpf = bpf
        self.loaded = True

    def _decision_program(self) -> None:
        """The one program every hook tail-calls (enf_decide_tail), loaded on first use."""
        from bcc import BPF

        if self._decide is None:
            try:
                self._decide = self.bpf.load_func(b"enf_decide_tail", BPF.TRACEPOINT)
            except Exception as e:
                raise SensorError(f"sensor {self.name}: enf_decide_tail: {e}") from e
            self.bpf[b"enf_tail"][ct.c_int(0)] = ct.c_int(self._decide.fd)

    def _fn(self, tp: str):
        from bcc import BPF

        fn = self._fns.get(tp)
        if fn is None:
            hook = next(h for h in self.hooks if h.target == tp)
            try:
                fn = self._fns[tp] = self.bpf.load_func(hook.fn.encode(), BPF.TRACEPOINT)
            except Exception as e:
                raise SensorError(f"sensor {self.name}: {hook.fn}: {e}") from e
        return fn

    def unload(self, bpf) -> None:
        self.counters()
        self._set_attached(set())
        self.loaded = False

    @property
    def attached(self) -> list[str]:
        return sorted(self._perf_fds)

    @property
    def attached_hooks(self) -> list[Hook]:
        return [h for h in self.hooks if h.target in self._perf_fds]

    def _set_attached(self, wanted: set[str]) -> None:
        from bcc import lib

        for tp in sorted(set(self._perf_fds) - wanted):
            lib.bpf_close_perf_event_fd(self._perf_fds.pop(tp))
        for tp in sorted(wanted - set(self._perf_fds)):
            category, event = tp.split(":")
            fd = lib.bpf_attach_tracepoint(self._fn(tp).fd, category.encode(), event.encode())
            if fd < 0:
                raise SensorError(f"sensor {self.name}: cannot attach to {tp}")
            self._perf_fds[tp] = fd

    # --------------------------------------------------------------------------------- policy
    def apply(self, policy: EnforcementPolicy, scope_truth=None) -> dict[str, str]:
        """Load the kill tables of `policy` (scope_truth(test) -> {cgroup id: truth} where it differs
        from test.default) and attach exactly the hooks they need. While the maps are rewritten the
        types are inactive (a rule change never kills on a half-loaded table: it fails open).
        Returns {event type: why it cannot be enforced} for types whose programs the kernel refused."""
        with self._lock:
            failed: dict[str, str] = {}
            if policy.kill:
                try:
                    self._decision_program()
                except SensorError as e:
                    failed = {t: str(e) for t in policy.kill}
            for t in policy.kill:
                for tp, ts in HOOK_TYPES.items():
                    if t in ts and t not in failed:
                        try:
                            self._fn(tp)
                        except SensorError as e:
                            failed[t] = str(e)
            self.generation += 1
            gen = self.generation
            self._rule_ids[gen] = list(policy.rule_ids)
            for old in [g for g in self._rule_ids if g < gen - 4]:
                del self._rule_ids[old]
            b = self.bpf
            types = b[b"enf_types"]
            for i in range(len(ENF_TYPES)):
                types[ct.c_int(i)] = types.Leaf()  # nclauses 0: inactive
            for name in (b"enf_paths", b"enf_names", b"enf_prefixes", b"enf_comms", b"enf_scope"):
                b[name].clear()
            active = {t: table for t, table in policy.kill.items() if t not in failed}
            for t, table in active.items():
                self._load_type(ET[t], table, gen, policy, scope_truth)
            self.policy = policy
            self.active_types = sorted(active)
            self._set_attached({tp for tp, ts in HOOK_TYPES.items() if any(t in active for t in ts)})
            return failed

    def _load_type(self, et: int, table: TypeTable, gen: int, policy: EnforcementPolicy, scope_truth) -> None:
        b = self.bpf
        paths, names, prefixes, comms, scope = (b[b"enf_paths"], b[b"enf_names"], b[b"enf_prefixes"],
                                                b[b"enf_comms"], b[b"enf_scope"])
        leaf = b[b"enf_types"].Leaf()
        exact_keys: dict[tuple, int] = {}
        name_keys: dict[tuple, int] = {}
        prefix_keys: dict[tuple, int] = {}
        lookups = 0
        for i, test in enumerate(table.tests):
            bit = 1 << i
            if isinstance(test, PathTest):
                slot = SLOT_INDEX[test.slot]
                leaf_field = {"file": "file_tests", "target": "target_tests", "exe": "exe_tests"}[test.slot]
                setattr(leaf, leaf_field, getattr(leaf, leaf_field) | bit)
                for p in test.exact:
                    exact_keys[(slot, p)] = exact_keys.get((slot, p), 0) | bit
                    lookups |= ELK_EXACT << (slot * 3)
                for p in test.prefixes:
                    prefix_keys[(slot, p)] = prefix_keys.get((slot, p), 0) | bit
                    lookups |= ELK_PREFIX << (slot * 3)
                for n in test.names:
                    name_keys[(slot, n)] = name_keys.get((slot, n), 0) | bit
                    lookups |= ELK_NAME << (slot * 3)
            elif isinstance(test, ValueTest):
                leaf.value_tests |= bit
                vt = leaf.vt[i]
                vt.value, vt.op, vt.shift = VALUES.index(test.value), OP_INDEX[test.op], test.shift
                vt.mask, vt.konst = test.mask, test.const
            elif isinstance(test, CommTest):
                leaf.comm_tests |= bit
                for c in test.comms:
                    key = comms.Key(et, c.encode()[:15])
                    old = comms.get(key)
                    comms[key] = ct.c_uint64((old.value if old is not None else 0) | bit)
            elif isinstance(test, ScopeTest):
                leaf.scope_tests |= bit
                if test.default:
                    leaf.scope_default |= bit
                for cgroup, truth in (scope_truth(test) if scope_truth else {}).items():
                    scope[scope.Key(et, i, cgroup)] = ct.c_uint8(1 if truth else 0)
        for (slot, p), mask in exact_keys.items():
            paths[paths.Key(et, slot, len(p), 0, p)] = ct.c_uint64(mask)
        for (slot, n), mask in name_keys.items():
            names[names.Key(et, slot, len(n), 0, n)] = ct.c_uint64(mask)
        # the trie answers with the longest stored prefix only: give each prefix the bits of the
        # shorter prefixes it extends
        for (slot, p), mask in prefix_keys.items():
            for (slot2, q), m2 in prefix_keys.items():
                if slot2 == slot and len(q) < len(p) and p.startswith(q):
                    mask |= m2
            prefixes[prefixes.Key((2 + len(p)) * 8, et, slot, p)] = ct.c_uint64(mask)
        for i, c in enumerate(table.clauses):
            leaf.cl[i].pos, leaf.cl[i].neg, leaf.cl[i].rule = c.pos, c.neg, policy.rule_index(c.rule)
        leaf.gen, leaf.lookups = gen, lookups
        leaf.nclauses = len(table.clauses)
        b[b"enf_types"][ct.c_int(et)] = leaf

    def update_scope(self, policy: EnforcementPolicy, scope_truth) -> None:
        """Reload the per-cgroup truth of the scope tests (pods came or went), tables unchanged."""
        with self._lock:
            if self.policy is not policy:
                return
            scope = self.bpf[b"enf_scope"]
            want = {}
            for t, table in policy.kill.items():
                for i, test in enumerate(table.tests):
                    if isinstance(test, ScopeTest):
                        for cgroup, truth in scope_truth(test).items():
                            want[(ET[t], i, cgroup)] = 1 if truth else 0
            have = {(k.type, k.test, k.cgroup): v.value for k, v in scope.items()}
            for key in set(have) - set(want):
                del scope[scope.Key(*key)]
            for key, v in want.items():
                if have.get(key) != v:
                    scope[scope.Key(*key)] = ct.c_uint8(v)

    def counters(self) -> dict[str, int]:
        """Summed over CPUs; after unload, the last values read (health is still written then)."""
        if self.loaded and self.bpf is not None:
            table = self.bpf[b"enf_counters"]
            self._counters = {name: sum(table[ct.c_int(i)]) for i, name in enumerate(COUNTERS)}
        return dict(self._counters)

    # --------------------------------------------------------------------------------- decode
    def rule_id(self, gen: int, index: int) -> str:
        ids = self._rule_ids.get(gen)
        return ids[index] if ids is not None and index < len(ids) else f"#{index}"

    def decode(self, data, off: int, length: int) -> Event:
        import struct

        hdr = R.HEADER.unpack_from(data, off)
        action, rule, et, sc, gen, plen, tlen, flags, mode = struct.unpack_from(ENFORCE_BODY[1], data,
                                                                                off + ENFORCE_BODY[0])
        var = off + R.HEADER_SIZE + struct.calcsize(ENFORCE_BODY[1])
        path = bytes(data[var:var + plen])
        target = bytes(data[var + plen:var + plen + tlen])
        etype = ENF_TYPES[et] if et < len(ENF_TYPES) else str(et)
        syscall = ENF_SYSCALLS[sc - 1] if 0 < sc <= len(ENF_SYSCALLS) else ("sched_process_exec" if sc == 0 else
                                                                                str(sc))
        ev = Event(R.RK_ENFORCE, T_ENFORCEMENT, syscall, hdr, bytes(data[off + R.SIG_START:off + R.SIG_END]))
        lexical = R.PF_UNRESOLVED if etype in STRING_PATH_TYPES and syscall not in ("fchmod", "fchown", "ftruncate") \
            else 0
        ev.file = FileRef(path, lexical) if path else None
        ev.target = FileRef(target, lexical) if target else None
        ev.flags, ev.mode = flags, mode
        sent = hdr[4]  # retval: bpf_send_signal's result
        ev.attrs = {"action": "kill", "rule_id": self.rule_id(gen, rule),
                    "outcome": "killed" if sent == 0 else f"kill_failed:{os.strerror(-sent) if sent < 0 else sent}",
                    "event_type": etype, "syscall": syscall, "path": text(path), "pid": str(hdr[7]),
                    "tid": str(hdr[8]), "effect": effect(etype), "backend": "bpf_send_signal"}
        if target:
            ev.attrs["target"] = text(target)
        self.kill_records += 1
        return ev
