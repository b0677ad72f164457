"""Typed intermediate form of one rule: boolean structure over atoms, after name resolution and type
checking. The evaluator generates Python from it; approvers.py reads it to derive kernel filters.

Values (V*) are what a comparison compares; atoms are the comparisons themselves. Every atom knows how
to write its own Python code, so one rule's code is the same whichever event type it is specialized to.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .fields import Field
from .patterns import Pattern


class Pool:
    """Constants referenced by generated code, by name (so no rule text is ever pasted into code)."""

    def __init__(self):
        self.ns: dict[str, object] = {}

    def add(self, value, prefix: str = "_k") -> str:
        name = f"{prefix}{len(self.ns)}"
        self.ns[name] = value
        return name


# ----------------------------------------------------------------------------------------- values
@dataclass(frozen=True, eq=False)
class VField:
    field: Field

    @property
    def type(self):
        return self.field.type


@dataclass(frozen=True, eq=False)
class VConst:
    value: object
    type: str


@dataclass(frozen=True, eq=False)
class VBit:
    op: str  # & | ^ ~
    a: object
    b: object = None
    type: str = "int"


def value_fields(v) -> list[Field]:
    if isinstance(v, VField):
        return [v.field]
    if isinstance(v, VBit):
        return value_fields(v.a) + (value_fields(v.b) if v.b is not None else [])
    return []


def value_code(v, pool: Pool, elem: bool = False) -> str:
    """Python code of a value. `elem`: inside an any() over an array field, the element is X."""
    if isinstance(v, VField):
        return f"({v.field.code})" if (elem or not v.field.is_array) else f"({v.field.value_code()})"
    if isinstance(v, VConst):
        if isinstance(v.value, bool) or (isinstance(v.value, int) and not isinstance(v.value, bool)):
            return repr(v.value)
        return pool.add(v.value)
    if isinstance(v, VBit):
        if v.op == "~":
            return f"(~{value_code(v.a, pool, elem)})"
        return f"({value_code(v.a, pool, elem)} {v.op} {value_code(v.b, pool, elem)})"
    raise TypeError(v)


def array_field(v) -> Field | None:
    for f in value_fields(v):
        if f.is_array:
            return f
    return None


# ------------------------------------------------------------------------------------------ atoms
class Atom:
    """A comparison. `negated` atoms are the negation of their positive form (any-semantics on arrays)."""

    negated = False

    def fields(self) -> list[Field]:
        raise NotImplementedError

    def positive_code(self, pool: Pool, elem: bool) -> str:
        raise NotImplementedError

    def code(self, pool: Pool) -> str:
        arr = next((f for f in self.fields() if f.is_array), None)
        if arr is not None:
            pos = f"any({self.positive_code(pool, True)} for X in {arr.each})"
        else:
            pos = self.positive_code(pool, False)
        return f"(not {pos})" if self.negated else pos


@dataclass(eq=False)
class Rel(Atom):
    """left op right; op in == != < <= > >= (negation is spelled by the op itself, except on arrays)."""

    left: object
    op: str
    right: object
    negated: bool = False

    def fields(self):
        return value_fields(self.left) + value_fields(self.right)

    def positive_code(self, pool, elem):
        lc, rc = value_code(self.left, pool, elem), value_code(self.right, pool, elem)
        if self.left.type == "duration" and self.op in ("<", "<="):
            return f"(0 <= {lc} {self.op} {rc})"  # -1 (unknown) never counts as "young"
        return f"({lc} {self.op} {rc})"


@dataclass(eq=False)
class Member(Atom):
    """value in {exact values} or matching one of the patterns (in, not in, =~, !~, == ~"glob")."""

    left: object
    exact: frozenset
    patterns: tuple  # of Pattern
    negated: bool = False

    def __post_init__(self):
        # a glob without wildcards is just a value: keep it with the exact ones (set lookup, exact approver)
        literal = {p.exact for p in self.patterns if p.kind == "glob" and p.exact is not None}
        if literal:
            self.exact = frozenset(self.exact | literal)
            self.patterns = tuple(p for p in self.patterns if not (p.kind == "glob" and p.exact is not None))

    def fields(self):
        return value_fields(self.left)

    def positive_code(self, pool, elem):
        v = value_code(self.left, pool, elem)
        parts = []
        if len(self.exact) == 1:
            parts.append(f"{v} == {pool.add(next(iter(self.exact)))}")
        elif self.exact:
            parts.append(f"{v} in {pool.add(self.exact)}")
        globs = [p for p in self.patterns if p.kind == "glob"]
        prefixes = tuple(p.prefix for p in globs if p.prefix is not None)
        if prefixes:  # one C call for every "dir/**" pattern
            parts.append(f"{v}.startswith({pool.add(prefixes if len(prefixes) > 1 else prefixes[0])})")
        rx_globs = [p for p in globs if p.prefix is None]
        if rx_globs:
            import re
            joined = (b"|" if rx_globs[0].is_bytes else "|").join(
                (b"(?:" + p.rx.pattern + b")") if p.is_bytes else f"(?:{p.rx.pattern})" for p in rx_globs)
            parts.append(f"{pool.add(re.compile(joined, re.DOTALL))}.fullmatch({v}) is not None")
        for p in self.patterns:
            if p.kind == "regex":
                parts.append(f"{pool.add(p.rx)}.search({v}) is not None")
        if not parts:
            return "False"
        return "(" + " or ".join(parts) + ")"


@dataclass(eq=False)
class IpMember(Atom):
    """ip field equal to an address or inside a CIDR block, for any of the given networks."""

    left: VField
    nets: tuple
    negated: bool = False

    def fields(self):
        return [self.left.field]

    def positive_code(self, pool, elem):
        return f"_ip_in({value_code(self.left, pool, elem)}, {pool.add(self.nets)})"


@dataclass(eq=False)
class Truth(Atom):
    """A bool field, or an int (bit) expression tested for non-zero."""

    value: object
    negated: bool = False

    def fields(self):
        return value_fields(self.value)

    def positive_code(self, pool, elem):
        c = value_code(self.value, pool, elem)
        return c if self.value.type == "bool" else f"({c} != 0)"


@dataclass(eq=False)
class EventType(Atom):
    """event.type == / in: a real test, folded to a constant when the rule is specialized to one type."""

    types: frozenset
    negated: bool = False

    def fields(self):
        return []

    def positive_code(self, pool, elem):
        return f'(E["event_type"] in {pool.add(self.types)})'


def ip_in(addr: str, nets) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(a in n for n in nets)


# ----------------------------------------------------------------------------------- boolean tree
@dataclass(eq=False)
class And:
    items: list


@dataclass(eq=False)
class Or:
    items: list


@dataclass(eq=False)
class Not:
    item: object


@dataclass(eq=False)
class Const:
    value: bool


TRUE, FALSE = Const(True), Const(False)


def atom_event_type(atom: Atom) -> str | None:
    for f in atom.fields():
        if f.event_types is not None:
            return f.event_type
    return None


def specialize(node, event_type: str):
    """The rule as seen by events of one type: atoms of other types are false, event.type tests are
    constants, and constants are folded away."""
    if isinstance(node, Atom):
        if isinstance(node, EventType):
            return Const((event_type in node.types) != node.negated)
        t = atom_event_type(node)
        if t is not None and t != event_type:
            return FALSE
        return node
    if isinstance(node, Const):
        return node
    if isinstance(node, Not):
        inner = specialize(node.item, event_type)
        return Const(not inner.value) if isinstance(inner, Const) else Not(inner)
    is_and = isinstance(node, And)
    items = []
    for item in node.items:
        s = specialize(item, event_type)
        if isinstance(s, Const):
            if s.value != is_and:  # False in an And, True in an Or: decides the whole node
                return s
            continue
        items.append(s)
    if not items:
        return Const(is_and)
    if len(items) == 1:
        return items[0]
    return And(items) if is_and else Or(items)


def bool_code(node, pool: Pool) -> str:
    if isinstance(node, Const):
        return repr(node.value)
    if isinstance(node, Atom):
        return node.code(pool)
    if isinstance(node, Not):
        return f"(not {bool_code(node.item, pool)})"
    joiner = " and " if isinstance(node, And) else " or "
    return "(" + joiner.join(bool_code(i, pool) for i in node.items) + ")"


def used_locals(node) -> set[str]:
    if isinstance(node, Atom):
        out = set()
        for f in node.fields():
            out |= set(f.uses)
        return out
    if isinstance(node, Const):
        return set()
    if isinstance(node, Not):
        return used_locals(node.item)
    out = set()
    for i in node.items:
        out |= used_locals(i)
    return out


def describe(node) -> str:
    """Short human form of a specialized tree (for `rules explain`)."""
    if isinstance(node, Const):
        return "true" if node.value else "false"
    if isinstance(node, Not):
        return f"!({describe(node.item)})"
    if isinstance(node, (And, Or)):
        j = " && " if isinstance(node, And) else " || "
        return "(" + j.join(describe(i) for i in node.items) + ")"
    names = ",".join(f.name for f in node.fields()) or "event.type"
    return f"{'!' if node.negated else ''}{type(node).__name__}({names})"
