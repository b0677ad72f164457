"""Name resolution, type checking and event-type inference: AST (syntax.py) -> typed IR (ir.py).

Event types. A field prefixed by an event type (`open.file.path`) makes its comparison hold only for
events of that type. A rule therefore matches an event of type T only if T is among the rule's types:
    comparison on a T-field -> {T}      comparison on other fields, event.type tests -> every type
    a && b -> types(a) & types(b)       a || b -> types(a) | types(b)       !a -> types(a), weakly
`a && b` with disjoint, specific types is an error (an event has one type). A negated side constrains
only weakly: it never narrows a positive side (see type_constraint). Alternatives of different types
under || are allowed: for a `rename` event every `open.*` comparison is false, so
`open.file.path == "/x" || rename.file.destination.path == "/x"` covers both types. `!open.file.path == "/x"`
still only matches open events: the field prefix is a precondition, not part of what `!` negates.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import fields as catalog
from .constants import CONSTANTS
from .errors import ExprError, Loc
from .ir import (FALSE, TRUE, And, Atom, Const, EventType, IpMember, Member, Not, Or, Rel, Truth, VBit, VConst,
                 VField, atom_event_type, value_fields)
from .patterns import compile_glob, compile_regex, has_wildcard, to_bytes
from .syntax import Binary, Compare, Lit, ListLit, Name, Node, Unary

ALL_TYPES = frozenset(catalog.EVENT_TYPES)
_STRINGY = ("path", "bytes", "str")
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass
class Macro:
    name: str
    node: Node  # parsed expression
    at: Loc


@dataclass
class ListDef:
    name: str
    items: list  # Lit nodes
    at: Loc


@dataclass
class Env:
    macros: dict = field(default_factory=dict)
    lists: dict = field(default_factory=dict)


def _type_names(types: frozenset) -> str:
    return ", ".join(sorted(types)) if types != ALL_TYPES else "any type"


class Checker:
    def __init__(self, env: Env):
        self.env = env
        self._expanding: list[str] = []
        self.warnings: list[tuple[Loc, str]] = []

    # ---------------------------------------------------------------------------- boolean level
    def condition(self, node: Node):
        """Compile a node that must be a condition. Returns an IR boolean tree."""
        if isinstance(node, Binary) and node.op in ("&&", "||"):
            left, right = self.condition(node.left), self.condition(node.right)
            if node.op == "&&":
                (lt, ls), (rt, rs) = type_constraint(left), type_constraint(right)
                if ls == rs and not (lt & rt):
                    raise ExprError(f"the two sides of && hold for different event types ({_type_names(lt)} vs "
                                    f"{_type_names(rt)}) and an event has one type: use || between alternatives",
                                    node.at)
                return And(_flat(And, [left, right]))
            return Or(_flat(Or, [left, right]))
        if isinstance(node, Unary) and node.op == "!":
            return Not(self.condition(node.operand))
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, Lit) and node.kind == "bool":
            return TRUE if node.value else FALSE
        if isinstance(node, Name):
            macro = self.env.macros.get(node.name) if node.key is None else None
            if macro is not None:
                return self.expand(macro, node)
            if node.key is None and node.name in self.env.lists:
                raise ExprError(f"'{node.name}' is a list: use it as `field in {node.name}`", node.at)
        value = self.value(node)
        if value.type == "bool":
            return Truth(value)
        if isinstance(value, VBit):
            return Truth(value)  # `open.flags & O_CREAT` alone means "any of these bits"
        raise ExprError(f"expected a condition, got a {value.type} value (compare it with ==, >, in, =~ ...)",
                        node.at)

    def expand(self, macro: Macro, use: Node):
        if macro.name in self._expanding:
            chain = " -> ".join(self._expanding + [macro.name])
            raise ExprError(f"macro cycle: {chain}", use.at)
        self._expanding.append(macro.name)
        try:
            return self.condition(macro.node)
        finally:
            self._expanding.pop()

    # ------------------------------------------------------------------------------- values
    def value(self, node: Node):
        if isinstance(node, Lit):
            if node.kind in ("int", "duration", "bool"):
                return VConst(node.value, node.kind)
            return VConst(node, "literal")  # strings and patterns take their type from the other side
        if isinstance(node, Name):
            f = catalog.lookup(node.name, node.key)
            if f is not None:
                return VField(f)
            if node.key is None and node.name in CONSTANTS:
                return VConst(CONSTANTS[node.name], "int")
            if node.key is None and node.name in self.env.macros:
                raise ExprError(f"macro '{node.name}' is a condition, not a value", node.at)
            raise ExprError(f"unknown name '{node.name}{'' if node.key is None else '[..]'}': expected a field, "
                            f"a constant, a macro or a list{_suggest(node.name)}", node.at)
        if isinstance(node, Unary) and node.op == "^":
            inner = self.int_value(node.operand)
            return VConst(~inner.value, "int") if isinstance(inner, VConst) else VBit("~", inner)
        if isinstance(node, Binary) and node.op in ("&", "|", "^"):
            a, b = self.int_value(node.left), self.int_value(node.right)
            if isinstance(a, VConst) and isinstance(b, VConst):
                return VConst({"&": a.value & b.value, "|": a.value | b.value, "^": a.value ^ b.value}[node.op], "int")
            return VBit(node.op, a, b)
        if isinstance(node, ListLit):
            raise ExprError("a list can only follow `in` or `not in`", node.at)
        raise ExprError("expected a value (a field, a constant or a literal), got a condition", node.at)

    def int_value(self, node: Node):
        v = self.value(node)
        if v.type != "int":
            raise ExprError(f"bit operators need integers, got a {v.type if v.type != 'literal' else 'string'}",
                            node.at)
        if isinstance(v, VField) and v.field.is_array:
            raise ExprError(f"bit operators cannot use the array field {v.field.name}", node.at)
        return v

    # --------------------------------------------------------------------------- comparisons
    def event_type_test(self, node: Compare):
        target = node.left if isinstance(node.left, Name) else None
        if target is not None and target.key is None and target.name == "event.type" and node.op in ("==", "!=", "in", "notin"):
            if node.op in ("in", "notin"):
                items = self.list_items(node.right)
            else:
                if not (isinstance(node.right, Lit) and node.right.kind == "str"):
                    raise ExprError("event.type compares with a quoted event type, e.g. \"open\"", node.right.at)
                items = [node.right]
            types = set()
            for it in items:
                if it.kind != "str" or it.value not in ALL_TYPES:
                    raise ExprError(f"unknown event type {it.value!r}: expected one of {', '.join(catalog.EVENT_TYPES)}",
                                    it.at)
                types.add(it.value)
            return EventType(frozenset(types), negated=node.op in ("!=", "notin"))
        return None

    def compare(self, node: Compare):
        et = self.event_type_test(node)
        if et is not None:
            return et
        op = node.op
        if op in ("in", "notin"):
            return self.membership(node)
        left, right = self.value(node.left), self.value(node.right)
        if isinstance(left, VConst) and not isinstance(right, VConst):
            left, right = right, left
            if op in ("=~", "!~"):
                raise ExprError(f"put the field on the left of {op}", node.at)
            op = _MIRROR[op]
        if isinstance(left, VConst):
            raise ExprError("a comparison needs a field on one side", node.at)
        _check_same_type_fields(left, right, node)
        ltype = left.type
        if op in ("=~", "!~"):
            if ltype not in _STRINGY:
                raise ExprError(f"=~ and !~ need a string field, {_fname(left)} is {ltype}", node.at)
            pat = self.pattern(right, ltype, node.right, force=True)
            return Member(left, frozenset(), (pat,), negated=(op == "!~"))
        if ltype == "ip":
            if op not in ("==", "!="):
                raise ExprError(f"ip fields support ==, !=, in and not in, not {op}", node.at)
            return IpMember(left, (self.ip_net(right, node.right),), negated=(op == "!="))
        if isinstance(right, VConst) and right.type == "literal":
            lit = right.value
            if lit.kind in ("glob", "regex"):
                if op not in ("==", "!="):
                    raise ExprError(f"patterns compare with ==, !=, =~ or !~, not {op}", node.at)
                return Member(left, frozenset(), (self.pattern(right, ltype, node.right),), negated=(op == "!="))
            right = VConst(self.coerce_str(lit, ltype, node.right), ltype)
        elif isinstance(right, VConst):
            right = self.coerce_const(right, ltype, node.right)
        elif right.type != ltype and not (ltype == "int" and right.type == "int"):
            raise ExprError(f"cannot compare {ltype} {_fname(left)} with {right.type} {_fname(right)}", node.at)
        if op in ("<", "<=", ">", ">=") and ltype not in ("int", "duration"):
            raise ExprError(f"{op} needs numbers or durations, {_fname(left)} is {ltype}", node.at)
        if ltype == "bool" and op not in ("==", "!="):
            raise ExprError(f"bool fields compare with == or !=, not {op}", node.at)
        if isinstance(left, VField) and left.field.is_array and op in ("!=",):
            return Rel(left, "==", right, negated=True)  # "no ancestor equals"
        if isinstance(right, VField) and right.field.is_array:
            raise ExprError("an array field can only be on the left of a comparison", node.at)
        return Rel(left, op, right)

    def membership(self, node: Compare):
        left = self.value(node.left)
        if isinstance(left, VConst):
            raise ExprError("`in` needs a field on its left", node.left.at)
        items = self.list_items(node.right)
        negated = node.op == "notin"
        ltype = left.type
        if ltype == "ip":
            return IpMember(left, tuple(self.ip_net(VConst(i, "literal") if i.kind != "int" else VConst(i.value, "int"),
                                                    i) for i in items), negated)
        exact, patterns = set(), []
        for item in items:
            if item.kind in ("glob", "regex"):
                if ltype not in _STRINGY:
                    raise ExprError(f"patterns need a string field, {_fname(left)} is {ltype}", item.at)
                patterns.append(self.pattern(VConst(item, "literal"), ltype, item))
            elif item.kind == "str":
                exact.add(self.coerce_str(item, ltype, item))
            else:
                exact.add(self.coerce_const(VConst(item.value, item.kind), ltype, item).value)
        return Member(left, frozenset(exact), tuple(patterns), negated)

    def list_items(self, node: Node) -> list[Lit]:
        if isinstance(node, ListLit):
            out = []
            for item in node.items:
                if isinstance(item, Name) and item.key is None and item.name in CONSTANTS:
                    out.append(Lit(item.at, CONSTANTS[item.name], "int"))
                elif isinstance(item, Name) and item.key is None and item.name in self.env.lists:
                    out.extend(self.env.lists[item.name].items)  # a list inside a list is spliced in
                elif isinstance(item, Lit):
                    out.append(item)
                else:
                    raise ExprError("expected a literal value or a constant in the list", item.at)
            return out
        if isinstance(node, Name) and node.key is None and node.name in self.env.lists:
            return list(self.env.lists[node.name].items)
        if isinstance(node, Name):
            raise ExprError(f"unknown list '{node.name}'{_suggest(node.name, list(self.env.lists))}", node.at)
        raise ExprError("expected a list [..] or the name of a list after `in`", node.at)

    # ---------------------------------------------------------------------------- literals
    def coerce_str(self, lit: Lit, ftype: str, where: Node):
        if lit.kind != "str":
            raise ExprError(f"expected a {ftype} value, got {lit.kind}", where.at)
        s = lit.value
        if ftype in ("path", "bytes"):
            return to_bytes(s)
        if ftype == "str":
            if any(0xDC80 <= ord(c) <= 0xDCFF for c in s):
                raise ExprError("\\xNN escapes above \\x7f are only for byte fields (paths, names, args)", where.at)
            return s
        want = {"duration": "a duration such as 10s", "int": "an integer", "bool": "true or false"}.get(ftype, ftype)
        raise ExprError(f"expected {want}, got a string", where.at)

    def coerce_const(self, v: VConst, ftype: str, where: Node) -> VConst:
        if ftype == "int" and v.type == "int":
            return v
        if ftype == "duration" and v.type == "duration":
            return v
        if ftype == "duration" and v.type == "int" and v.value == 0:
            return VConst(0, "duration")
        if ftype == "bool" and v.type == "bool":
            return v
        want = {"duration": "a duration such as 10s or 5m", "int": "an integer", "bool": "true or false"}.get(
            ftype, f"a {ftype} string")
        raise ExprError(f"expected {want}, got {v.type} {v.value!r}", where.at)

    def pattern(self, v, ftype: str, where: Node, force: bool = False):
        if not isinstance(v, VConst) or v.type != "literal":
            raise ExprError("expected a pattern: \"glob\", ~\"glob\" or r\"regex\"", where.at)
        lit = v.value
        is_bytes = ftype in ("path", "bytes")
        if lit.kind == "regex":
            return compile_regex(lit.value, is_bytes)
        if lit.kind == "glob" or (lit.kind == "str" and force):
            if ftype == "str" and any(0xDC80 <= ord(c) <= 0xDCFF for c in lit.value):
                raise ExprError("\\xNN escapes above \\x7f are only for byte fields", where.at)
            return compile_glob(lit.value, is_bytes, ftype == "path")
        raise ExprError(f"expected a pattern, got {lit.kind}", where.at)

    def ip_net(self, v, where: Node):
        if isinstance(v, VConst) and v.type == "literal" and v.value.kind == "str":
            try:
                return ipaddress.ip_network(v.value.value, strict=False)
            except ValueError:
                raise ExprError(f"expected an IP address or CIDR block, got {v.value.value!r}", where.at) from None
        raise ExprError("ip fields compare with quoted addresses or CIDR blocks, e.g. \"10.0.0.0/8\"", where.at)


# ------------------------------------------------------------------------------------- helpers
def _fname(v) -> str:
    fs = value_fields(v)
    return fs[0].name if fs else "value"


def _flat(kind, items):
    out = []
    for i in items:
        out.extend(i.items if isinstance(i, kind) else [i])
    return out


def _check_same_type_fields(left, right, node):
    types = {f.event_type for f in value_fields(left) + value_fields(right) if f.event_types is not None}
    if len(types) > 1:
        raise ExprError(f"one comparison uses fields of different event types ({', '.join(sorted(types))})", node.at)


def _suggest(name: str, extra=()) -> str:
    import difflib
    pool = list(catalog.FIELDS) + list(CONSTANTS) + list(extra)
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def type_constraint(node) -> tuple[frozenset, str]:
    """(event types, strength). strength: "none" (no field selects a type), "weak" (only negated
    comparisons do: `!open.file.path == "/x"` still means open events only) or "strong". In `a && !b`, the
    weak side never narrows a strong one: `create.file.path =~ "/dev/**" && !mkdir.file.path == "/x"`
    keeps create events, and an exception (`rule && !exception`) never changes the rule's types."""
    if isinstance(node, Atom):
        t = atom_event_type(node)
        return (frozenset([t]), "strong") if t is not None else (ALL_TYPES, "none")
    if isinstance(node, Const):
        return ALL_TYPES, "none"
    if isinstance(node, Not):
        types, strength = type_constraint(node.item)
        return types, ("none" if strength == "none" else "weak")
    parts = [type_constraint(i) for i in node.items]
    if isinstance(node, And):
        for level in ("strong", "weak"):
            chosen = [t for t, st in parts if st == level]
            if chosen:
                out = ALL_TYPES
                for t in chosen:
                    out &= t
                return out, level
        return ALL_TYPES, "none"
    if any(st == "none" for _, st in parts):
        return ALL_TYPES, "none"
    out = frozenset()
    for t, _ in parts:
        out |= t
    return out, ("strong" if all(st == "strong" for _, st in parts) else "weak")


def types_of(node) -> frozenset:
    """Event types a (sub)rule can match: see the module doc and type_constraint."""
    return type_constraint(node)[0]
