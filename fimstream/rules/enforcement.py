"""Enforcement: which `actions: [kill]` / `actions: [deny]` rules the collector can decide exactly, and the
decision tables it loads for them.

A kill or deny is only as good as its condition: a rule the enforcement point cannot evaluate exactly would
kill or block the wrong processes. So every (rule, event type) is compiled here into a disjunction of
clauses over *tests* the enforcement point can compute exactly, or refused with the reason. A refused
rule keeps alerting in the detector; the collector does not enforce it (`fimstream rules lint` warns,
`fimstream rules explain` says why, the collector reports it in its health info).

Tests (each one bit of a per-event-type mask in the kernel):

    PathTest   the path of slot file / target / exe is one of `exact`, starts with one of `prefixes`, or has
               one of `names` as its last component. Kernel keys are at most 255 bytes (prefixes 254).
    ValueTest  ((value >> shift) & mask) <op> constant, value one of flags, mode, uid, gid, euid, egid,
               owner_uid, owner_gid; op in == != < <= > >= (signed 64-bit).
    CommTest   process.comm is one of `comms`.
    ScopeTest  a Kubernetes/container atom (k8s.*, container.*): true or false per cgroup; the collector
               evaluates it against each local pod's metadata and loads the cgroup ids where it holds.

A clause is (pos, neg): every test in pos holds and none in neg. Negations (`!=`, `not in`, exceptions)
are exact because every test is exactly computable. What is refused: regexes, globs other than exact,
`dir/**` and `/**/name`, fields the enforcement point cannot read at that moment (arguments, ancestors,
inode numbers, event.retval...), array fields, field-to-field comparisons, types without a hook, and
clauses with no positive path, executable or scope condition (a kill of every write is not a rule, it is
an outage).

Where each kind is decided, and what SIGKILL leaves done on this kernel (measured; bpf_send_signal at the
hook, delivered before the syscall returns to user space):

    write, mmap       sys_enter, path walked from the fd (true path)      prevented
    exec              sched_process_exec, true path of the new image      prevented: the new image never runs
    open, create      sys_exit (succeeded), path walked from the new fd   the process never uses the fd; the
                                                                          file is created / truncated anyway
    unlink, rmdir, rename, chmod, chown, truncate
                      sys_enter, the caller's string joined to the true   NOT prevented: the change happens
                      dirfd/cwd path (fchmod/fchown/ftruncate: the fd)    and the process dies after it

Deny (fanotify permission events, answered by the collector) covers open and exec; the open flags and
mode come from /proc/<tid>/syscall of the blocked requester.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from . import fields as catalog
from .ir import And, Atom, Const, IpMember, Member, Not, Or, Pool, Rel, Truth, VBit, VConst, VField

KEY_MAX = 255  # bytes of an exact path / name the kernel hashes
PREFIX_MAX = 254  # bytes of a prefix in the kernel's LPM trie
MAX_TESTS = 64  # per event type (one u64 mask)
MAX_CLAUSES = 64  # per event type
_ALL = (1 << 64) - 1

# event type -> (hook, effect of SIGKILL on this kernel)
KILL_TYPES = {
    "write": ("sys_enter of write, pwrite64, writev, pwritev, pwritev2, sendfile64, copy_file_range, splice "
              "(path walked from the fd)", "prevented: nothing is written"),
    "mmap": ("sys_enter_mmap (path walked from the fd)", "prevented: the mapping is never used"),
    "exec": ("sched_process_exec (true path of the new image)", "prevented: the new image never runs an "
             "instruction (the old image is already gone)"),
    "open": ("sys_exit of openat, openat2, open (succeeded; path walked from the new fd)",
             "the open happened; the process dies before it can use the fd"),
    "create": ("sys_exit of openat, openat2, open, creat (succeeded, file created)",
               "NOT prevented: the file exists (O_TRUNC also truncates); the process dies before using it"),
    "truncate": ("sys_enter of truncate (caller's string) and ftruncate (fd)", "NOT prevented: the file is "
                 "truncated, then the process dies"),
    "unlink": ("sys_enter of unlinkat, unlink (caller's string)", "NOT prevented: the name is removed, then "
               "the process dies"),
    "rmdir": ("sys_enter of rmdir, unlinkat(AT_REMOVEDIR) (caller's string)", "NOT prevented: the directory "
              "is removed, then the process dies"),
    "rename": ("sys_enter of renameat2, renameat, rename (both strings)", "NOT prevented: the rename happens, "
               "then the process dies"),
    "chmod": ("sys_enter of fchmodat, fchmodat2, chmod (string), fchmod (fd)", "NOT prevented: the mode "
              "changes, then the process dies"),
    "chown": ("sys_enter of fchownat, chown, lchown (string), fchown (fd)", "NOT prevented: the owner "
              "changes, then the process dies"),
}
PREVENTED = frozenset({"write", "mmap", "exec"})
STRING_PATH_TYPES = frozenset({"truncate", "unlink", "rmdir", "rename", "chmod", "chown"})
DENY_TYPES = {
    "open": "fanotify FAN_OPEN_PERM: the open fails with EPERM (an O_CREAT open still creates the file; "
            "O_TRUNC does not truncate)",
    "exec": "fanotify FAN_OPEN_EXEC_PERM: execve fails with EPERM",
}
_DENY_REFUSED = {
    "create": "the file already exists when the first permission check runs: deny cannot prevent a "
              "creation (deny the open of the path instead, which stops the write)",
}

# value fields: catalog name -> (value, shift, width mask); per-type fields are added below
VALUE_FIELDS = {"process.uid": ("uid", 0, _ALL), "process.gid": ("gid", 0, _ALL),
                "process.euid": ("euid", 0, _ALL), "process.egid": ("egid", 0, _ALL)}
for _t in ("open", "unlink", "rename"):
    VALUE_FIELDS[f"{_t}.flags"] = ("flags", 0, _ALL)
for _t in ("open", "create", "chmod"):
    VALUE_FIELDS[f"{_t}.file.destination.mode"] = ("mode", 0, _ALL)
VALUE_FIELDS["chown.file.destination.uid"] = ("owner_uid", 0, _ALL)
VALUE_FIELDS["chown.file.destination.gid"] = ("owner_gid", 0, _ALL)
VALUE_FIELDS["mmap.protection"] = ("flags", 0, 0xFFFFFFFF)
VALUE_FIELDS["mmap.flags"] = ("flags", 32, 0xFFFFFFFF)
VALUES = ("flags", "mode", "uid", "gid", "euid", "egid", "owner_uid", "owner_gid")
SLOTS = ("file", "target", "exe")
OPS = ("==", "!=", "<", "<=", ">", ">=")
_NEGATE_OP = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
# what the fanotify decision can read about a blocked requester
_DENY_VALUES = {"open": {"flags", "mode", "uid", "gid", "euid", "egid"}, "exec": {"uid", "gid", "euid", "egid"}}


class Refused(Exception):
    """This (rule, event type) cannot be enforced exactly: the message says why."""


# ------------------------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class PathTest:
    slot: str  # file | target | exe
    exact: frozenset = frozenset()
    prefixes: frozenset = frozenset()
    names: frozenset = frozenset()

    def holds(self, path: bytes) -> bool:
        return (path in self.exact or any(path.startswith(p) for p in self.prefixes)
                or path.rpartition(b"/")[2] in self.names)

    def describe(self) -> str:
        from fimstream.schemas.codec import text
        parts = [text(p) for p in sorted(self.exact)] + [text(p) + "**" for p in sorted(self.prefixes)]
        parts += ["*/" + text(n) for n in sorted(self.names)]
        what = {"file": "file", "target": "destination", "exe": "process exe"}[self.slot]
        return f"{what} in [{', '.join(parts)}]"


@dataclass(frozen=True)
class ValueTest:
    value: str  # one of VALUES
    shift: int
    mask: int
    op: str
    const: int

    def holds(self, v: int) -> bool:
        x = (v >> self.shift) & self.mask
        return {"==": x == self.const, "!=": x != self.const, "<": x < self.const, "<=": x <= self.const,
                ">": x > self.const, ">=": x >= self.const}[self.op]

    def describe(self) -> str:
        v = self.value if not self.shift else f"({self.value} >> {self.shift})"
        if self.mask != _ALL:
            v = f"({v} & {self.mask:#x})"
        return f"{v} {self.op} {self.const}"


@dataclass(frozen=True)
class CommTest:
    comms: frozenset

    def holds(self, comm: str) -> bool:
        return comm in self.comms

    def describe(self) -> str:
        return f"comm in [{', '.join(sorted(self.comms))}]"


@dataclass(frozen=True, eq=False)
class ScopeTest:
    """A k8s.* / container.* atom (positive form), true or false for a cgroup's pod/container context."""

    atom: Atom
    text: str

    def __post_init__(self):
        pool = Pool()
        code = self.atom.positive_code(pool, False)
        ns = dict(catalog.HELPERS)
        ns.update(pool.ns)
        src = "def _f(E):\n    K = E.get('k8s') or _EMPTY_K8S\n    return bool(" + code + ")\n"
        exec(compile(src, f"<scope {self.text}>", "exec"), ns)  # noqa: S102 - generated from the IR
        object.__setattr__(self, "_fn", ns["_f"])

    def holds(self, k8s: dict | None, container_id: str = "", runtime: str = "") -> bool:
        """Truth for a cgroup whose pod/container context is `k8s` (None: a host process or unknown)."""
        return self._fn({"k8s": k8s, "container_id": container_id, "container_runtime": runtime})

    @property
    def default(self) -> bool:
        """Truth for cgroups of no known pod (host processes, pods not seen yet)."""
        return self.holds(None)

    def describe(self) -> str:
        return self.text


@dataclass
class Clause:
    pos: int  # bit mask of tests that must hold
    neg: int  # bit mask of tests that must not hold
    rule: str


@dataclass
class TypeTable:
    """Decision table of one event type for one action."""

    event_type: str
    tests: list = field(default_factory=list)  # index = bit
    clauses: list = field(default_factory=list)

    def test_bit(self, test) -> int:
        for i, t in enumerate(self.tests):
            if t == test and type(t) is type(test):
                return 1 << i
        if len(self.tests) >= MAX_TESTS:
            raise Refused(f"more than {MAX_TESTS} distinct kernel tests for {self.event_type} events "
                          "across the enforcing rules")
        self.tests.append(test)
        return 1 << (len(self.tests) - 1)

    def mask_of(self, kind, slot: str | None = None) -> int:
        m = 0
        for i, t in enumerate(self.tests):
            if isinstance(t, kind) and (slot is None or t.slot == slot):
                m |= 1 << i
        return m

    def decide(self, facts) -> tuple[str | None, bool]:
        """(matching rule id or None, undecided). `facts(test)` -> True, False or None (unknown);
        undecided is True when no clause matched but one might have with the unknown facts."""
        truth, known = 0, 0
        for i, t in enumerate(self.tests):
            v = facts(t)
            if v is not None:
                known |= 1 << i
                if v:
                    truth |= 1 << i
        undecided = False
        for c in self.clauses:
            if c.pos & known & ~truth or c.neg & known & truth:
                continue  # a known fact contradicts it
            if (c.pos | c.neg) & ~known:
                undecided = True
                continue
            return c.rule, False
        return None, undecided


@dataclass
class Refusal:
    rule: str
    action: str
    event_type: str
    reason: str

    def __str__(self) -> str:
        return f"rule {self.rule}: {self.action} on {self.event_type} refused: {self.reason}; it stays alert-only"


@dataclass
class EnforcementPolicy:
    version: str
    kill: dict = field(default_factory=dict)  # event type -> TypeTable
    deny: dict = field(default_factory=dict)
    refused: list = field(default_factory=list)  # Refusal
    rule_ids: list = field(default_factory=list)  # rule index (kernel records) -> id

    @property
    def empty(self) -> bool:
        return not self.kill and not self.deny

    def rule_index(self, rule_id: str) -> int:
        return self.rule_ids.index(rule_id)

    def scope_tests(self) -> list:
        out = []
        for tables in (self.kill, self.deny):
            for tt in tables.values():
                out += [t for t in tt.tests if isinstance(t, ScopeTest)]
        return out

    def enforced_rules(self, action: str) -> dict:
        """rule id -> event types it is enforced on."""
        out: dict[str, list] = {}
        for t, tt in (self.kill if action == "kill" else self.deny).items():
            for c in tt.clauses:
                if t not in out.setdefault(c.rule, []):
                    out[c.rule].append(t)
        return out

    def summary(self) -> dict:
        return {"kill": {r: ts for r, ts in self.enforced_rules("kill").items()},
                "deny": {r: ts for r, ts in self.enforced_rules("deny").items()},
                "refused": [str(r) for r in self.refused]}


# ---------------------------------------------------------------------------------------- compile
def compile_policy(ruleset) -> EnforcementPolicy:
    """Decision tables of every enabled kill/deny rule, per event type; refusals for the rest."""
    policy = EnforcementPolicy(ruleset.version)
    for rule in ruleset.enabled_rules:
        for action in ("kill", "deny"):
            if action not in rule.actions:
                continue
            supported = KILL_TYPES if action == "kill" else DENY_TYPES
            for t in sorted(rule.event_types):
                if t not in supported:
                    reason = (_DENY_REFUSED.get(t) if action == "deny" else None) or (
                        f"no {action} hook for {t} events (kill: {', '.join(KILL_TYPES)}; deny: "
                        f"{', '.join(DENY_TYPES)})")
                    policy.refused.append(Refusal(rule.id, action, t, reason))
                    continue
                tables = policy.kill if action == "kill" else policy.deny
                table = tables.get(t) or TypeTable(t)
                saved = (list(table.tests), list(table.clauses))
                try:
                    _add_rule(table, rule, t, action)
                except Refused as e:
                    table.tests, table.clauses = saved
                    policy.refused.append(Refusal(rule.id, action, t, str(e)))
                    continue
                tables[t] = table
                if rule.id not in policy.rule_ids:
                    policy.rule_ids.append(rule.id)
    return policy


def _add_rule(table: TypeTable, rule, t: str, action: str) -> None:
    lits = _dnf(_nnf(rule.specialized[t], False))
    if not lits:
        raise Refused("the condition can never hold")
    new = []
    for clause in lits:
        pos = neg = 0
        anchored = False
        for atom, positive in clause:
            test, polarity = _literal(atom, t, action)
            bit = table.test_bit(test)
            if polarity == positive:
                pos |= bit
                if action == "kill" and isinstance(test, (PathTest, ScopeTest)):
                    anchored = True
                elif isinstance(test, PathTest) and test.slot == "file":
                    anchored = True  # deny: fanotify marks go where these paths are
            else:
                neg |= bit
        if pos & neg:
            continue  # contradiction: this alternative never holds
        if not anchored:
            raise Refused("an alternative of the condition has no positive file path condition (deny needs "
                          "one to place fanotify marks)" if action == "deny" else
                          "an alternative of the condition has no positive path, executable or Kubernetes scope "
                          f"condition: it would {action} every {t} event it allows")
        new.append(Clause(pos, neg, rule.id))
    if len(table.clauses) + len(new) > MAX_CLAUSES:
        raise Refused(f"more than {MAX_CLAUSES} alternatives for {t} events across the enforcing rules")
    table.clauses += new


def _nnf(node, negate: bool):
    """Negation normal form: Or/And of (atom, positive) literals."""
    if isinstance(node, Const):
        return Const(node.value != negate)
    if isinstance(node, Not):
        return _nnf(node.item, not negate)
    if isinstance(node, (And, Or)):
        items = [_nnf(i, negate) for i in node.items]
        return (Or if isinstance(node, And) == negate else And)(items)
    return ("lit", node, not negate)


def _dnf(node) -> list[list]:
    """List of clauses, each a list of (atom, positive)."""
    if isinstance(node, Const):
        return [[]] if node.value else []
    if isinstance(node, tuple):
        return [[(node[1], node[2])]]
    if isinstance(node, Or):
        out = []
        for i in node.items:
            out += _dnf(i)
            if len(out) > MAX_CLAUSES:
                raise Refused(f"the condition expands to more than {MAX_CLAUSES} alternatives")
        return out
    out = [[]]
    for i in node.items:
        sub = _dnf(i)
        out = [a + b for a in out for b in sub]
        if len(out) > MAX_CLAUSES:
            raise Refused(f"the condition expands to more than {MAX_CLAUSES} alternatives")
    return out


def _field(v) -> catalog.Field | None:
    return v.field if isinstance(v, VField) else None


def _literal(atom, t: str, action: str) -> tuple[object, bool]:
    """(test, polarity): the atom holds iff the test's truth equals polarity."""
    if isinstance(atom, IpMember):
        raise Refused("network fields are not decidable at the enforcement point")
    fields_ = atom.fields()
    for f in fields_:
        if f.is_array:
            raise Refused(f"{f.name} is a list (ancestors, arguments): not readable at the enforcement point")
    if fields_ and all(f.name.startswith(("k8s.", "container.")) for f in fields_):
        if not isinstance(atom, (Member, Rel)) or isinstance(atom, Rel) and not isinstance(atom.right, VConst):
            raise Refused(f"unsupported Kubernetes condition on {fields_[0].name}")
        positive = copy.copy(atom)
        positive.negated = False
        return ScopeTest(positive, _scope_text(positive)), not atom.negated
    if isinstance(atom, Member):
        return _member_test(atom, t, action), not atom.negated
    if isinstance(atom, Truth):
        v = atom.value
        if isinstance(v, VBit) and v.op == "&":
            spec, mask = _masked(v, t, action)
            return ValueTest(spec[0], spec[1], spec[2] & mask, "!=", 0), not atom.negated
        f = _field(v)
        raise Refused(f"{f.name if f else 'this value'} is not readable at the enforcement point")
    if isinstance(atom, Rel):
        test, polarity = _rel_test(atom, t, action)
        return test, polarity != atom.negated
    raise Refused(f"unsupported condition {type(atom).__name__}")


def _value_field(f: catalog.Field, t: str, action: str) -> tuple[str, int, int]:
    spec = VALUE_FIELDS.get(f.name)
    if spec is None:
        raise Refused(f"{f.name} is not readable at the enforcement point")
    if action == "deny" and spec[0] not in _DENY_VALUES[t]:
        raise Refused(f"{f.name} is not known to the fanotify decision for {t}")
    return spec


def _masked(v: VBit, t: str, action: str) -> tuple[tuple[str, int, int], int]:
    for a, b in ((v.a, v.b), (v.b, v.a)):
        f = _field(a)
        if f is not None and isinstance(b, VConst):
            return _value_field(f, t, action), b.value & _ALL
    raise Refused("only `field & CONSTANT` bit tests are decidable at the enforcement point")


def _rel_test(atom: Rel, t: str, action: str) -> tuple[object, bool]:
    left, op, right = atom.left, atom.op, atom.right
    if not isinstance(right, VConst):
        raise Refused("field-to-field comparisons are not decidable at the enforcement point")
    if isinstance(left, VBit):
        if left.op != "&":
            raise Refused(f"bit operator {left.op} in a comparison")
        spec, mask = _masked(left, t, action)
        return ValueTest(spec[0], spec[1], spec[2] & mask, op, int(right.value)), True
    f = _field(left)
    if f is None:
        raise Refused("unsupported comparison")
    if f.type in ("path", "bytes", "str"):
        if op not in ("==", "!="):
            raise Refused(f"{op} on {f.name}")
        return _string_test(f, frozenset([right.value]), (), t, action), op == "=="
    if f.type == "int":
        spec = _value_field(f, t, action)
        return ValueTest(spec[0], spec[1], spec[2], op, int(right.value)), True
    raise Refused(f"{f.name} ({f.type}) is not readable at the enforcement point")


def _member_test(atom: Member, t: str, action: str):
    f = _field(atom.left)
    if f is None:
        raise Refused("membership on a computed value")
    if f.type == "int":
        if atom.patterns or len(atom.exact) != 1:
            raise Refused(f"`{f.name} in [several values]` (write it as `== a || == b`)")
        spec = _value_field(f, t, action)
        return ValueTest(spec[0], spec[1], spec[2], "==", int(next(iter(atom.exact))))
    return _string_test(f, atom.exact, atom.patterns, t, action)


def _string_test(f: catalog.Field, exact, patterns, t: str, action: str):
    name = f.name
    if name == "process.comm":
        if patterns:
            raise Refused("process.comm patterns (only exact names are decidable)")
        return CommTest(frozenset(exact))
    if name in ("process.file.path", "process.file.name"):
        # at exec the process image is the file being executed: one path for both fields
        slot, role = ("file" if t == "exec" else "exe"), ("path" if name.endswith("path") else "name")
    elif f.role in ("path", "name") and f.slot in ("file", "target") and f.event_type == t:
        slot, role = f.slot, f.role
        if slot == "target" and action == "deny":
            raise Refused(f"{name}: the fanotify decision sees one file")
    else:
        raise Refused(f"{name} is not readable at the enforcement point")
    ex, pre, names = set(), set(), set()
    for v in exact:
        if role == "path":
            if not v.startswith(b"/"):
                raise Refused(f"{name} == {v!r}: paths are absolute")
            if len(v) > KEY_MAX:
                raise Refused(f"{name}: a path longer than {KEY_MAX} bytes")
            ex.add(v)
        else:
            if len(v) > KEY_MAX or b"/" in v or not v:
                raise Refused(f"{name}: not a file name: {v!r}")
            names.add(v)
    for p in patterns:
        if p.kind != "glob":
            raise Refused(f"{name} =~ {p}: regular expressions are not decidable in the kernel")
        rest = p.source[4:]
        if role == "path" and p.prefix is not None:
            if len(p.prefix) > PREFIX_MAX:
                raise Refused(f"{name}: a prefix longer than {PREFIX_MAX} bytes")
            pre.add(p.prefix)
        elif role == "path" and p.source.startswith("/**/") and rest and not any(c in rest for c in "/*?"):
            names.add(p.last_literal)  # "/**/name": exactly "the last component is name"
        else:
            raise Refused(f"{name} =~ {p}: only exact paths, \"dir/**\" prefixes and \"/**/name\" are decidable "
                          "in the kernel")
    if action == "deny" and slot == "file" and names:
        raise Refused(f"{name}: a file name without a directory (deny places fanotify marks where the paths are)")
    return PathTest(slot, frozenset(ex), frozenset(pre), frozenset(names))


def _scope_text(atom: Atom) -> str:
    f = atom.fields()[0]
    if isinstance(atom, Member):
        vals = sorted(map(str, atom.exact)) + [str(p) for p in atom.patterns]
        return f"{f.name} in [{', '.join(vals)}]"
    return f"{f.name} {atom.op} {atom.right.value!r}"


def describe_clause(table: TypeTable, c: Clause) -> str:
    parts = [table.tests[i].describe() for i in range(len(table.tests)) if c.pos >> i & 1]
    parts += ["not " + table.tests[i].describe() for i in range(len(table.tests)) if c.neg >> i & 1]
    return " and ".join(parts) or "always"



def event_facts(event: dict):
    """Reference semantics of the tests on a decoded event (what the kernel or the fanotify decision
    computes for the same call), for TypeTable.decide: tests check that a compiled table decides exactly
    like the rule itself on the same events."""
    proc = event["process"]
    f, t = event.get("file"), event.get("target")
    paths = {"file": f["path"] if f else None, "target": t["path"] if t else None, "exe": proc["exe"]}
    values = {"flags": event["flags"], "mode": event["mode"], "uid": proc["uid"], "gid": proc["gid"],
              "euid": proc["euid"], "egid": proc["egid"], "owner_uid": event["owner_uid"],
              "owner_gid": event["owner_gid"]}

    def facts(test):
        if isinstance(test, PathTest):
            path = paths[test.slot]
            return None if path is None else test.holds(path)
        if isinstance(test, ValueTest):
            return test.holds(values[test.value])
        if isinstance(test, CommTest):
            return test.holds(proc["comm"])
        return test.holds(event.get("k8s"), event.get("container_id", ""), event.get("container_runtime", ""))
    return facts
