"""What the kernel may filter: approvers (static, from the rules) and discarders (dynamic, asked per
directory or file).

Approvers. For each event type, every rule of that type must be *covered*: whenever the rule matches an
event, the event satisfies at least one of the rule's approvers. An approver is one cheap kernel test:

    path      the event's file (slot "file") or second file (slot "target") has exactly this path,
              or this (dev, ino) - exact paths are stat()ed at load so hard links and bind mounts match
    name      ... has this base name
    prefix    ... path starts with this prefix: the literal text of a glob before its first wildcard
              ("/etc/" for "/etc/**", "/memfd:" for "/memfd:*")
    exe       the process executable has this path
    flags     event.flags & mask != 0 (a type-wide approver)
    mode      event.mode & mask != 0 (the mode argument of chmod/create/mkdir/mknod/open; type-wide)
    attr      a bool field of the record is true (exec.file.deleted, exec.file.upper_layer, exec.setuid,
              exec.setgid; type-wide): tested by the collector on the decoded record before publishing,
              for record kinds the kernel passes anyway (exec: the process cache needs every one)

Path/name/prefix/exe approvers carry a `flags` mask too: 0 means any flags, else the event must also have
one of those bits (e.g. writes under /etc: prefix "/etc/" with O_WRONLY|O_RDWR|O_CREAT|O_TRUNC).
A rule that cannot be covered (e.g. `process.comm == "nc"` on open) makes its type `pass` everything; a
type no rule uses is `drop`ped in the kernel. KernelPolicy.passes(event) states the semantics exactly: the
collector's eBPF code must pass at least what it passes.

Derivation on a rule's specialized tree: a comparison on an approvable field gives its values; `a || b`
needs both sides covered (union); `a && b` is covered by either side (the most selective one is used,
refined by a flags-only side); `!a`, `!=`, `not in`, regexes and other fields give nothing.

Discarders. can_discard(T, directory=D) is True only if no rule can match any event of type T whose file
(slot "file") lies strictly under D; can_discard(T, path=P) likewise for the one path P. Both evaluate the
rules in three-valued logic (true / false / unknown) with every other field unknown, so they are sound by
construction; the hypothesis tests check it. A discarder is valid for one RuleSet.version: flush the
kernel's discarder map on reload, and on rename/move of a discarded inode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import fields as catalog
from .ir import And, Atom, Const, IpMember, Member, Not, Or, Rel, Truth, VBit, VConst, VField, specialize
from .patterns import glob_covers, glob_possible_under

# --------------------------------------------------------------------------------------- approvers
_KIND_COST = {"path": 1, "name": 2, "exe": 3, "prefix": 4, "attr": 6, "flags": 8, "mode": 8}


@dataclass(frozen=True)
class Approver:
    kind: str  # path | name | prefix | exe | flags | mode | attr
    slot: str | None  # file | target for path/name/prefix; None for exe/flags/attr
    value: object  # bytes, the mask for kind flags/mode, the field name for attr
    flags: int = 0  # extra flags mask required (0: any)


def _cost(approvers: frozenset) -> tuple:
    worst = max((_KIND_COST[a.kind] - (0.5 if a.flags else 0) for a in approvers), default=0)
    return (worst, len(approvers))


def _field_of(v):
    return v.field if isinstance(v, VField) and not v.field.is_array else None


def _bit_mask(atom) -> tuple[str, int] | None:
    """If the atom implies `event.<flags|mode> & mask != 0`: (role, mask)."""
    def masked(v):  # (field & M) -> (role, M)
        if isinstance(v, VBit) and v.op == "&":
            for a, b in ((v.a, v.b), (v.b, v.a)):
                f = _field_of(a)
                if f is not None and f.role in ("flags", "mode") and isinstance(b, VConst):
                    return f.role, b.value
        return None
    if isinstance(atom, Truth) and not atom.negated:
        return masked(atom.value)
    if isinstance(atom, Rel) and not atom.negated and isinstance(atom.right, VConst):
        c = atom.right.value
        f = _field_of(atom.left)
        if f is not None and f.role in ("flags", "mode") and atom.op == "==" and c != 0:
            return f.role, c
        m = masked(atom.left)
        if m is None:
            return None
        role, mask = m
        op = atom.op
        if (op == ">" and c >= 0) or (op == ">=" and c >= 1) or (op == "!=" and c == 0):
            return role, mask  # the masked value is non-negative, so > 0 means some bit of mask is set
        if op == "==" and c != 0:
            return role, (mask & c if (c & ~mask) == 0 else 0)  # 0: can never hold
    return None


def atom_approvers(atom) -> frozenset | None:
    """Approvers covering one atom, or None if the kernel cannot test it."""
    if isinstance(atom, Truth) and (f := _field_of(atom.value)) is not None and f.role == "attr":
        return None if atom.negated else frozenset([Approver("attr", None, f.name)])
    bits = _bit_mask(atom)
    if bits is not None:
        return frozenset() if bits[1] == 0 else frozenset([Approver(bits[0], None, bits[1])])
    if not isinstance(atom, Member) and not (isinstance(atom, Rel) and atom.op == "=="):
        return None
    if atom.negated:
        return None
    f = _field_of(atom.left)
    if f is None or f.role not in ("path", "name", "exe"):
        return None
    if isinstance(atom, Rel):
        if not isinstance(atom.right, VConst):
            return None
        values, patterns = frozenset([atom.right.value]), ()
    else:
        values, patterns = atom.exact, atom.patterns
    kind = {"path": "path", "name": "name", "exe": "exe"}[f.role]
    slot = f.slot if kind != "exe" else None
    out = {Approver(kind, slot, v) for v in values}
    for p in patterns:
        if p.kind != "glob":
            return None
        if f.role == "path":
            if p.last_literal is not None:
                out.add(Approver("name", slot, p.last_literal))
            elif len(p.literal_prefix) > 1:
                out.add(Approver("prefix", slot, p.literal_prefix))
            else:
                return None  # "/*.so": a prefix of "/" filters nothing
        else:
            return None
    return frozenset(out)


def tree_approvers(node) -> frozenset | None:
    if isinstance(node, Const):
        return frozenset() if not node.value else None
    if isinstance(node, Atom):
        return atom_approvers(node)
    if isinstance(node, Not):
        return None
    if isinstance(node, Or):
        out = set()
        for item in node.items:
            a = tree_approvers(item)
            if a is None:
                return None
            out |= a
        return frozenset(out)
    # And: any side that is covered covers the whole; pick the most selective, refine with a flags side
    sides = [a for a in (tree_approvers(i) for i in node.items) if a is not None]
    if not sides:
        return None
    if any(len(s) == 0 for s in sides):
        return frozenset()  # one side can never hold
    flag_sides = [s for s in sides if all(a.kind == "flags" for a in s)]
    other = [s for s in sides if s not in flag_sides and not all(a.kind == "mode" for a in s)]
    if not other:
        mode_sides = [s for s in sides if all(a.kind == "mode" for a in s)]
        return min(flag_sides + mode_sides, key=lambda s: (bin(_union_mask(s)).count("1"), len(s)))
    best = min(other, key=_cost)
    if flag_sides:
        mask = min((_union_mask(s) for s in flag_sides), key=lambda m: bin(m).count("1"))
        best = frozenset(a if a.flags or a.kind in ("flags", "mode") else Approver(a.kind, a.slot, a.value, mask)
                         for a in best)
    return best


def _union_mask(s) -> int:
    m = 0
    for a in s:
        m |= a.value
    return m


# ------------------------------------------------------------------------------------ KernelPolicy
@dataclass
class TypePolicy:
    """Kernel filter of one event type. mode: drop (no rule needs it), pass (a rule needs every event of
    this type: `reasons` names them), filter (pass only what an approver accepts)."""

    event_type: str
    mode: str
    paths: dict = field(default_factory=dict)  # slot -> {path bytes: flags mask (0 = any)}
    inodes: dict = field(default_factory=dict)  # slot -> {(st_dev, st_ino): flags mask}
    names: dict = field(default_factory=dict)  # slot -> {basename bytes: flags mask}
    prefixes: dict = field(default_factory=dict)  # slot -> {path prefix bytes: flags mask}
    exes: dict = field(default_factory=dict)  # {process exe path: flags mask}
    exe_inodes: dict = field(default_factory=dict)  # {(st_dev, st_ino): flags mask}
    flags: int = 0  # pass any event with event.flags & flags != 0 (0: no such approver)
    mode_bits: int = 0  # pass any event with event.mode & mode_bits != 0 (0: no such approver)
    attrs: tuple = ()  # pass any event on which one of these bool fields is true (judged in userspace)
    rules: tuple = ()  # rule ids evaluated for this type
    reasons: tuple = ()  # mode "pass": the rule ids that cannot be filtered in the kernel

    def passes(self, event: dict) -> bool:
        if self.mode != "filter":
            return self.mode == "pass"
        flags = event.get("flags", 0)

        def ok(mask):
            return mask is not None and (mask == 0 or flags & mask != 0)
        if self.flags and flags & self.flags:
            return True
        if self.mode_bits and event.get("mode", 0) & self.mode_bits:
            return True
        for name in self.attrs:
            try:
                if catalog.FIELDS[name].read(event):
                    return True
            except (KeyError, TypeError):  # the view lacks what the field reads: unknown, so pass
                return True
        for slot, key in (("file", "file"), ("target", "target")):
            rec = event.get(key)
            if rec is None:
                continue
            path = rec["path"]
            if ok(self.paths.get(slot, {}).get(path)) or ok(self.inodes.get(slot, {}).get((rec["dev"], rec["ino"]))):
                return True
            if ok(self.names.get(slot, {}).get(path.rpartition(b"/")[2])):
                return True
            for prefix, mask in self.prefixes.get(slot, {}).items():
                if path.startswith(prefix) and ok(mask):
                    return True
        proc = event["process"]
        if ok(self.exes.get(proc["exe"])) or ok(self.exe_inodes.get((proc.get("exe_dev", 0), proc.get("exe_ino", 0)))):
            return True
        return False


@dataclass
class KernelPolicy:
    """Everything the collector loads into eBPF maps, per event type. Plain data: no bcc here.

    dev numbers are userspace st_dev values; the kernel's sb->s_dev encoding is kernel_dev(st_dev)."""

    version: str  # RuleSet.version: discarders are valid for this version only
    types: dict  # event type -> TypePolicy
    unresolved: tuple = ()  # exact paths that did not exist at load time (approved by path only)

    def passes(self, event: dict) -> bool:
        """Reference semantics of the kernel filter for one event (the eBPF side must pass at least this)."""
        tp = self.types.get(event["event_type"])
        return True if tp is None else tp.passes(event)

    def mode(self, event_type: str) -> str:
        tp = self.types.get(event_type)
        return tp.mode if tp else "pass"

    def to_dict(self) -> dict:
        """JSON-ready form (bytes as text with \\xNN escapes, inodes as "dev:ino")."""
        from fimstream.schemas.codec import text

        def conv(d):
            return {text(k) if isinstance(k, bytes) else (f"{k[0]}:{k[1]}" if isinstance(k, tuple) else k): v
                    for k, v in d.items()}
        out = {"version": self.version, "unresolved": [text(p) for p in self.unresolved], "types": {}}
        for t, tp in self.types.items():
            d = {"mode": tp.mode, "rules": list(tp.rules)}
            if tp.mode == "pass":
                d["reasons"] = list(tp.reasons)
            if tp.mode == "filter":
                for name in ("paths", "inodes", "names", "prefixes"):
                    slots = {slot: conv(v) for slot, v in getattr(tp, name).items() if v}
                    if slots:
                        d[name] = slots
                if tp.exes:
                    d["exes"] = conv(tp.exes)
                if tp.exe_inodes:
                    d["exe_inodes"] = conv(tp.exe_inodes)
                if tp.flags:
                    d["flags"] = tp.flags
                if tp.mode_bits:
                    d["mode_bits"] = tp.mode_bits
                if tp.attrs:
                    d["attrs"] = list(tp.attrs)
            out["types"][t] = d
        return out


def kernel_dev(st_dev: int) -> int:
    """Userspace st_dev -> the kernel's internal dev_t (MKDEV: major << 20 | minor), as in sb->s_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _merge(d: dict, key, mask: int):
    old = d.get(key)
    d[key] = mask if old is None else (0 if (old == 0 or mask == 0) else old | mask)


def kernel_policy(ruleset, resolve_inodes: bool = True) -> KernelPolicy:
    types = {}
    unresolved = set()
    stat_cache: dict[bytes, tuple | None] = {}

    def stat(path: bytes):
        if path not in stat_cache:
            try:
                st = os.stat(path)
                stat_cache[path] = (st.st_dev, st.st_ino)
            except OSError:
                stat_cache[path] = None
                unresolved.add(path)
        return stat_cache[path]

    for t in catalog.EVENT_TYPES:
        rules = ruleset.rules_for(t)
        if not rules:
            types[t] = TypePolicy(t, "drop")
            continue
        tp = TypePolicy(t, "filter", rules=tuple(r.id for r in rules))
        reasons = []
        for r in rules:
            approvers = tree_approvers(r.specialized[t])
            if approvers is None:
                reasons.append(r.id)
                continue
            for a in approvers:
                if a.kind == "flags":
                    tp.flags |= a.value
                elif a.kind == "mode":
                    tp.mode_bits |= a.value
                elif a.kind == "attr":
                    if a.value not in tp.attrs:
                        tp.attrs += (a.value,)
                elif a.kind == "exe":
                    _merge(tp.exes, a.value, a.flags)
                    if resolve_inodes and (key := stat(a.value)) is not None:
                        _merge(tp.exe_inodes, key, a.flags)
                else:
                    table = {"path": tp.paths, "name": tp.names, "prefix": tp.prefixes}[a.kind]
                    _merge(table.setdefault(a.slot, {}), a.value, a.flags)
                    if a.kind == "path" and resolve_inodes and (key := stat(a.value)) is not None:
                        _merge(tp.inodes.setdefault(a.slot, {}), key, a.flags)
        if reasons:
            tp = TypePolicy(t, "pass", rules=tp.rules, reasons=tuple(reasons))
        types[t] = tp
    return KernelPolicy(ruleset.version, types, tuple(sorted(unresolved)))


# ------------------------------------------------------------------------------------- discarders
UNKNOWN = None  # three-valued logic: True, False, or None (unknown)


def _path_fact(atom, *, directory: bytes | None, path: bytes | None):
    """Truth of an atom when slot "file"'s path is `path`, or some path strictly under `directory`."""
    if not isinstance(atom, (Member, Rel)):
        return UNKNOWN
    f = _field_of(atom.left)
    if f is None or f.slot != "file" or f.role not in ("path", "name"):
        return UNKNOWN
    if isinstance(atom, Rel):
        if atom.op not in ("==", "!=") or not isinstance(atom.right, VConst):
            return UNKNOWN
        exact, patterns, negated = frozenset([atom.right.value]), (), atom.op == "!="
    else:
        exact, patterns, negated = atom.exact, atom.patterns, atom.negated
    if path is not None:  # the value is known: evaluate
        value = path if f.role == "path" else path.rpartition(b"/")[2]
        hit = value in exact or any(p.matches(value) for p in patterns)
        return hit != negated
    if f.role == "name":
        return UNKNOWN
    d = directory.rstrip(b"/") + b"/"
    if any(p.kind == "glob" and glob_covers(p, directory) for p in patterns):
        return not negated  # every path under the directory matches
    possible = any(v.startswith(d) and len(v) > len(d) for v in exact)
    for p in patterns:
        if p.kind == "regex" or glob_possible_under(p, directory):
            possible = True
    if possible:
        return UNKNOWN
    return negated  # no path under the directory matches


def _eval3(node, facts):
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Atom):
        return facts(node)
    if isinstance(node, Not):
        v = _eval3(node.item, facts)
        return None if v is None else not v
    is_and = isinstance(node, And)
    result = is_and
    for item in node.items:
        v = _eval3(item, facts)
        if v is (not is_and):
            return v  # False decides an And, True an Or
        if v is None:
            result = None
    return result


def can_discard(ruleset, event_type: str, *, directory=None, path=None) -> bool:
    """True only if no rule can match an event of `event_type` whose file is `path`, or lies strictly
    under `directory`. Sound: unknown anywhere means False."""
    if (directory is None) == (path is None):
        raise ValueError("give exactly one of directory= or path=")
    to_b = lambda p: os.fsencode(p) if isinstance(p, str) else p  # noqa: E731
    directory, path = (to_b(directory) if directory is not None else None), (to_b(path) if path is not None else None)

    def facts(atom):
        return _path_fact(atom, directory=directory, path=path)
    for rule in ruleset.rules_for(event_type):
        if _eval3(rule.specialized[event_type], facts) is not False:
            return False
    return True
