"""Rule files -> a compiled RuleSet.

A rule set is one or more YAML files (or a directory of *.yaml / *.yml). Top-level keys of a file:

    lists:        {name: [values]}            # used as `field in name`; items may be {glob: ..} / {regex: ..}
    macros:       {name: expression}          # used as a condition by name
    rules:        [{id, expression, ...}]      # see RULE_KEYS
    exceptions:   [{rule | rules, when: {field: [values]} | expression, description}]
    correlations: [{id, sequence | threshold | score, within, by, same, ...}]   # see correlations.py

Lists and macros are shared by every file of the set. An exception silences its rule(s) when all of its
`when` fields have one of the listed values (or when its expression holds): the rule is compiled as
`rule && !(exception)`. A `when` value that is the name of a list stands for that list. Every problem found is reported at once (RuleError), with file:line:col.
A rule whose actions are [signal] matches without alerting: it only feeds correlations (and risk scores).
The rule-file format is documented in docs/rules.md.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import fields as catalog
from .compiler import ALL_TYPES, Checker, Env, ListDef, Macro, types_of
from .errors import ExprError, Loc, Problem, RuleError, problem_at
from .ir import FALSE, And, Const, Not, Pool, bool_code, ip_in, specialize, used_locals
from .syntax import Compare, ListLit, Lit, Name, parse
from .yamlsrc import Source, YamlProblem, mapping_items, to_python

SEVERITIES = ("info", "low", "medium", "high", "critical")
ACTIONS = ("alert", "kill", "deny", "hash", "signal")  # signal: no alert of its own, feeds correlations
RULE_KEYS = {"id", "description", "expression", "severity", "tags", "actions", "scope", "score", "enabled",
             "message", "version"}
EXCEPTION_KEYS = {"rule", "rules", "when", "expression", "description"}
SCOPE_KEYS = {"namespaces", "exclude_namespaces", "pod_labels"}
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
_ATTACK_RE = re.compile(r"^(T[0-9]{4}(\.[0-9]{3})?|TA[0-9]{4})$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]+)\}")


@dataclass(eq=False)
class Rule:
    id: str
    description: str
    expression: str
    severity: str = "medium"
    tags: tuple = ()
    actions: tuple = ("alert",)
    scope: dict = field(default_factory=dict)
    score: float = 0.0
    enabled: bool = True
    message: str = ""
    version: str = ""
    file: str = ""
    line: int = 0
    event_types: frozenset = frozenset()  # types the rule can match (after exceptions and scope)
    specialized: dict = field(default_factory=dict, repr=False)  # event type -> IR tree
    _matchers: dict = field(default_factory=dict, repr=False)

    def matches(self, event: dict) -> bool:
        """Evaluate this rule alone on one decoded event (tests, explain). The detector uses RuleSet.match."""
        fn = self._matchers.get(event["event_type"])
        return bool(fn(event)) if fn is not None else False

    def render_message(self, event: dict) -> str:
        """`message` with {field.name} placeholders filled from the event (description when empty)."""
        from fimstream.schemas.codec import text
        template = self.message or self.description or self.id

        def sub(m):
            f = catalog.lookup(m.group(1))
            if f is None or (f.event_types is not None and event.get("event_type") not in f.event_types):
                return m.group(0) if f is None else ""
            v = f.read(event)
            if isinstance(v, list):
                return ",".join(text(x) if isinstance(x, bytes) else str(x) for x in v)
            return text(v) if isinstance(v, bytes) else str(v)
        return _PLACEHOLDER_RE.sub(sub, template)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def signal_only(self) -> bool:
        """actions: [signal]: the rule's matches feed correlations and scores but raise no alert."""
        return "signal" in self.actions


# ------------------------------------------------------------------------------------------ RuleSet
class RuleSet:
    """Compiled rules. `match(event)` returns the enabled rules an event matches, in file order.

    Each event type has one generated Python function holding every rule of that type, so an event only
    meets rules of its own type and nothing is interpreted per event. `correlations` are the stateful
    detections of the same files (fimstream.rules.correlations.Correlation), run by the detector."""

    def __init__(self, rules: list[Rule], files: list[str], warnings: list[Problem], digest: str,
                 correlations: Iterable = ()):
        self.rules = tuple(rules)
        self.correlations = tuple(correlations)
        self.correlation_by_id = {c.id: c for c in self.correlations}
        self.files = tuple(files)
        self.warnings = tuple(warnings)
        self.version = digest  # content hash of every file: equal sets have equal versions
        self.by_id = {r.id: r for r in self.rules}
        self._by_type: dict[str, tuple[Rule, ...]] = {}
        for t in catalog.EVENT_TYPES:
            self._by_type[t] = tuple(r for r in self.rules if r.enabled and t in r.event_types)
        self._match = _generate_matchers(self._by_type)
        self._none = _no_rules

    def match(self, event: dict) -> list[Rule]:
        return self._match.get(event["event_type"], self._none)(event)

    def rules_for(self, event_type: str) -> tuple[Rule, ...]:
        return self._by_type.get(event_type, ())

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    @property
    def enabled_correlations(self) -> tuple:
        return tuple(c for c in self.correlations if c.enabled)

    # approvers.py adds kernel_policy() and can_discard(); kept there so this module stays about matching
    def kernel_policy(self, resolve_inodes: bool = True):
        from .approvers import kernel_policy
        return kernel_policy(self, resolve_inodes=resolve_inodes)

    def can_discard(self, event_type: str, *, directory: bytes | str | None = None,
                    path: bytes | str | None = None) -> bool:
        from .approvers import can_discard
        return can_discard(self, event_type, directory=directory, path=path)

    def __repr__(self) -> str:
        return f"RuleSet({len(self.rules)} rules, {len(self.correlations)} correlations, version {self.version[:12]})"


def _no_rules(event):
    return []


_NS_BASE = dict(catalog.HELPERS, _ip_in=ip_in)


def _prelude(used: set[str]) -> list[str]:
    return [f"    {name} = {catalog.LOCALS[name]}" for name in catalog.LOCALS if name in used]


def _generate_matchers(by_type: dict[str, tuple[Rule, ...]]) -> dict:
    """One function per event type: bind the event's sub-records once, then test each rule in order."""
    pool = Pool()
    ns = dict(_NS_BASE)
    lines = []
    names = {}
    for t, rules in by_type.items():
        if not rules:
            continue
        used = set()
        body = []
        for r in rules:
            tree = r.specialized[t]
            used |= used_locals(tree)
            rname = pool.add(r, "_r")
            body.append(f"    if {bool_code(tree, pool)}: hits.append({rname})")
        fn = f"_match_{t}"
        names[t] = fn
        lines += [f"def {fn}(E):"] + _prelude(used) + ["    hits = []"] + body + ["    return hits", ""]
    ns.update(pool.ns)
    exec(compile("\n".join(lines), "<fimstream.rules>", "exec"), ns)  # noqa: S102 - generated from the IR
    return {t: ns[fn] for t, fn in names.items()}


def _rule_matchers(rule: Rule) -> dict:
    pool = Pool()
    lines = []
    for t, tree in rule.specialized.items():
        lines += [f"def _m_{t}(E):"] + _prelude(used_locals(tree)) + [f"    return {bool_code(tree, pool)}", ""]
    ns = dict(_NS_BASE)
    ns.update(pool.ns)
    exec(compile("\n".join(lines), f"<rule {rule.id}>", "exec"), ns)  # noqa: S102
    return {t: ns[f"_m_{t}"] for t in rule.specialized}


# ------------------------------------------------------------------------------------------ loading
def rule_files(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """The YAML files of a rule set: files as given, directories' *.yaml/*.yml (not recursive: a
    directory's tests/ subfolder holds fixtures, not rules), sorted by name."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
        else:
            out.append(p)
    return out


def load_rules(paths, *, extra_sources: Iterable[tuple[str, str]] = ()) -> RuleSet:
    """Load and compile a rule set from files/directories (plus in-memory (name, text) sources).
    Raises RuleError listing every problem with file:line:col."""
    sources = []
    problems = []
    for p in rule_files(paths):
        try:
            sources.append(Source(str(p), p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(str(p), 1, 1, f"cannot read rule file: {e}"))
    sources += [Source(name, text) for name, text in extra_sources]
    if problems:
        raise RuleError(problems)
    return compile_sources(sources)


def load_rules_text(text: str | bytes, name: str = "<text>") -> RuleSet:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return compile_sources([Source(name, text)])


@dataclass
class _ExceptionDef:
    rule_ids: list
    targets_at: list  # Loc per rule id
    when: list  # (field name, key node, value node)
    expression: tuple | None  # (node, where)
    at: Loc


class _Builder:
    def __init__(self):
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.env = Env()
        self.rule_defs: list[tuple[Source, object]] = []
        self.correlation_defs: list = []
        self.exceptions: list[_ExceptionDef] = []
        self.macro_where: dict[str, tuple] = {}

    def problem(self, src: Source, node, message: str, rule_id: str | None = None):
        self.problems.append(Problem(src.name, node.start_mark.line + 1, node.start_mark.column + 1, message,
                                     rule_id))

    # -- top level
    def add_source(self, src: Source):
        try:
            root = src.compose()
        except YamlProblem as e:
            self.problems.append(e.problem)
            return
        if root is None:
            return  # empty file
        if root.tag != "tag:yaml.org,2002:map":
            self.problem(src, root, "expected a mapping with keys lists, macros, rules, exceptions, correlations")
            return
        for key, knode, value in mapping_items(root):
            handler = {"lists": self.add_lists, "macros": self.add_macros, "rules": self.add_rules,
                       "exceptions": self.add_exceptions, "correlations": self.add_correlations}.get(key)
            if handler is None:
                self.problem(src, knode, f"unknown top-level key '{key}': expected lists, macros, rules, exceptions "
                                         "or correlations")
                continue
            handler(src, value)

    def add_lists(self, src, node):
        if not self._is_map(src, node, "lists"):
            return
        for name, knode, value in mapping_items(node):
            if not self._check_name(src, knode, name, "list"):
                continue
            if value.tag != "tag:yaml.org,2002:seq":
                self.problem(src, value, f"list '{name}': expected a sequence of values")
                continue
            items = []
            for item in value.value:
                lit = self.literal(src, item)
                if lit is not None:
                    items.append(lit)
            self.env.lists[name] = ListDef(name, items, Loc(src.node_where(knode), 0))

    def literal(self, src, item):
        """A list/exception value node -> Lit: strings, ints, bools, {glob: ..}, {regex: ..}."""
        at = Loc(src.node_where(item), 0)
        if item.tag == "tag:yaml.org,2002:map" and len(item.value) == 1 and item.value[0][0].value in ("glob", "regex"):
            kind = item.value[0][0].value
            text = item.value[0][1].value
            if kind == "regex":
                try:
                    re.compile(text)
                except re.error as e:
                    self.problem(src, item, f"bad regular expression: {e}")
                    return None
            return Lit(at, text, kind)
        if item.tag in ("tag:yaml.org,2002:str",):
            return Lit(at, item.value, "str")
        if item.tag == "tag:yaml.org,2002:int":
            return Lit(at, to_python(item), "int")
        if item.tag == "tag:yaml.org,2002:bool":
            return Lit(at, to_python(item), "bool")
        self.problem(src, item, "expected a string, an integer, true/false, {glob: ...} or {regex: ...}")
        return None

    def add_macros(self, src, node):
        if not self._is_map(src, node, "macros"):
            return
        for name, knode, value in mapping_items(node):
            if not self._check_name(src, knode, name, "macro"):
                continue
            if value.tag == "tag:yaml.org,2002:map":
                exprs = [v for k, _, v in mapping_items(value) if k == "expression"]
                if not exprs:
                    self.problem(src, value, f"macro '{name}': expected an expression")
                    continue
                value = exprs[0]
            if value.tag != "tag:yaml.org,2002:str" or not value.value.strip():
                self.problem(src, value, f"macro '{name}': expected an expression string")
                continue
            try:
                tree = parse(value.value, src.scalar_where(value))
            except ExprError as e:
                self.problems.append(problem_at(e.at, f"macro '{name}': {e.message}"))
                continue
            self.env.macros[name] = Macro(name, tree, Loc(src.node_where(knode), 0))

    def _check_name(self, src, knode, name, what) -> bool:
        if not _ID_RE.match(name) or "." in name:
            self.problem(src, knode, f"bad {what} name '{name}': use letters, digits and _")
            return False
        if catalog.lookup(name) is not None or name in catalog_constants():
            self.problem(src, knode, f"{what} name '{name}' hides a field or constant of the same name")
            return False
        if name in self.env.macros or name in self.env.lists:
            self.problem(src, knode, f"{what} '{name}' is defined twice (macros and lists share one namespace "
                                     "across all files)")
            return False
        return True

    def add_rules(self, src, node):
        if node.tag != "tag:yaml.org,2002:seq":
            self.problem(src, node, "rules: expected a sequence of rules (- id: ...)")
            return
        for item in node.value:
            if item.tag != "tag:yaml.org,2002:map":
                self.problem(src, item, "expected a rule: a mapping with id, expression, ...")
                continue
            self.rule_defs.append((src, item))

    def add_correlations(self, src, node):
        from .correlations import _Def
        if node.tag != "tag:yaml.org,2002:seq":
            self.problem(src, node, "correlations: expected a sequence of correlations (- id: ...)")
            return
        for item in node.value:
            if item.tag != "tag:yaml.org,2002:map":
                self.problem(src, item, "expected a correlation: a mapping with id, sequence/threshold/score, within")
                continue
            self.correlation_defs.append(_Def(src, item))

    def add_exceptions(self, src, node):
        if node.tag != "tag:yaml.org,2002:seq":
            self.problem(src, node, "exceptions: expected a sequence (- rule: ..., when: ...)")
            return
        for item in node.value:
            if item.tag != "tag:yaml.org,2002:map":
                self.problem(src, item, "expected an exception: a mapping with rule and when/expression")
                continue
            keys = {k: (kn, v) for k, kn, v in mapping_items(item)}
            for k, (kn, _) in keys.items():
                if k not in EXCEPTION_KEYS:
                    self.problem(src, kn, f"unknown exception key '{k}': expected {', '.join(sorted(EXCEPTION_KEYS))}")
            ids, ats = [], []
            for k in ("rule", "rules"):
                if k in keys:
                    v = keys[k][1]
                    nodes = v.value if v.tag == "tag:yaml.org,2002:seq" else [v]
                    for n in nodes:
                        ids.append(str(n.value))
                        ats.append(Loc(src.node_where(n), 0))
            if not ids:
                self.problem(src, item, "exception: expected `rule: <id>` or `rules: [ids]`")
                continue
            when = []
            if "when" in keys:
                wnode = keys["when"][1]
                if wnode.tag != "tag:yaml.org,2002:map":
                    self.problem(src, wnode, "exception when: expected {field: [values]}")
                    continue
                when = [(k, kn, v) for k, kn, v in mapping_items(wnode)]
            expression = None
            if "expression" in keys:
                enode = keys["expression"][1]
                try:
                    expression = parse(str(enode.value), src.scalar_where(enode))
                except ExprError as e:
                    self.problems.append(problem_at(e.at, f"exception: {e.message}"))
                    continue
            if not when and expression is None:
                self.problem(src, item, "exception: expected `when: {field: [values]}` or `expression:`")
                continue
            self.exceptions.append(_ExceptionDef(ids, ats, [(src, k, kn, v) for k, kn, v in when], expression,
                                                 Loc(src.node_where(item), 0)))

    def _is_map(self, src, node, what) -> bool:
        if node.tag != "tag:yaml.org,2002:map":
            self.problem(src, node, f"{what}: expected a mapping (name: value)")
            return False
        return True

    # -- rules
    def build_rule(self, src: Source, node, checker: Checker) -> tuple[Rule, object] | None:
        keys = {k: (kn, v) for k, kn, v in mapping_items(node)}
        rid_node = keys.get("id", (None, None))[1]
        rid = str(rid_node.value) if rid_node is not None else None
        ok = True
        for k, (kn, _) in keys.items():
            if k not in RULE_KEYS:
                self.problem(src, kn, f"unknown rule key '{k}': expected one of {', '.join(sorted(RULE_KEYS))}", rid)
                ok = False
        if rid is None:
            self.problem(src, node, "rule without id")
            return None
        if not _ID_RE.match(rid):
            self.problem(src, rid_node, f"bad rule id '{rid}': letters, digits, _ . - (starting with a letter)")
            ok = False
        if "expression" not in keys:
            self.problem(src, node, "rule without expression", rid)
            return None

        def scalar(key, default, kinds=(str,)):
            if key not in keys:
                return default
            value = to_python(keys[key][1])
            if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
                self.problem(src, keys[key][1], f"{key}: expected {' or '.join(k.__name__ for k in kinds)}", rid)
                return default
            return value

        def strings(key, default, allowed=None):
            if key not in keys:
                return default
            vnode = keys[key][1]
            value = to_python(vnode)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                self.problem(src, vnode, f"{key}: expected a list of strings", rid)
                return default
            if allowed is not None:
                for i, x in enumerate(value):
                    if x not in allowed:
                        at = vnode.value[i] if vnode.tag == "tag:yaml.org,2002:seq" else vnode
                        self.problem(src, at, f"{key}: unknown '{x}', expected one of {', '.join(allowed)}", rid)
            return tuple(value)

        severity = scalar("severity", "medium")
        if severity not in SEVERITIES:
            self.problem(src, keys["severity"][1], f"severity: expected one of {', '.join(SEVERITIES)}, got '{severity}'",
                         rid)
            ok = False
        tags = strings("tags", ())
        for i, t in enumerate(tags):
            if t[:1] == "T" and t[1:2].isdigit() or t.startswith("TA"):
                if not _ATTACK_RE.match(t):
                    self.problem(src, keys["tags"][1], f"tags: '{t}' is not a MITRE ATT&CK id (T1234, T1234.001, TA0001)",
                                 rid)
        actions = strings("actions", ("alert",), ACTIONS)
        if "signal" in actions and len(actions) > 1:
            self.problem(src, keys["actions"][1], "actions: signal means no alert of its own (matches only feed "
                                                  "correlations); it cannot be combined with other actions", rid)
        rule = Rule(
            id=rid, description=scalar("description", ""), expression=str(keys["expression"][1].value),
            severity=severity, tags=tags, actions=actions,
            score=float(scalar("score", 0.0, (int, float))), enabled=scalar("enabled", True, (bool,)),
            message=scalar("message", ""), version=str(scalar("version", "", (str, int, float))),
            file=src.name, line=node.start_mark.line + 1,
        )
        for m in _PLACEHOLDER_RE.finditer(rule.message):
            if catalog.lookup(m.group(1)) is None:
                self.problem(src, keys["message"][1], f"message: unknown field {{{m.group(1)}}}", rid)
        enode = keys["expression"][1]
        try:
            tree = checker.condition(parse(rule.expression, src.scalar_where(enode)))
        except ExprError as e:
            self.problems.append(problem_at(e.at, e.message, rid))
            return None
        if "scope" in keys:
            scope_tree = self.scope(src, keys["scope"][1], checker, rule)
            if scope_tree is None:
                return None
            tree = And([tree, scope_tree])
        return (rule, tree) if ok else None

    def scope(self, src, node, checker, rule):
        if node.tag != "tag:yaml.org,2002:map":
            self.problem(src, node, "scope: expected {namespaces, exclude_namespaces, pod_labels}", rule.id)
            return None
        parts = []
        rule.scope = to_python(node)
        for key, knode, value in mapping_items(node):
            if key not in SCOPE_KEYS:
                self.problem(src, knode, f"unknown scope key '{key}': expected {', '.join(sorted(SCOPE_KEYS))}", rule.id)
                return None
            if key in ("namespaces", "exclude_namespaces"):
                cond = self.field_in(src, "k8s.namespace", value, checker, negated=(key == "exclude_namespaces"))
                if cond is None:
                    return None
                parts.append(cond)
            else:
                if value.tag != "tag:yaml.org,2002:map":
                    self.problem(src, value, "pod_labels: expected {label: value or [values]}", rule.id)
                    return None
                for label, _, lv in mapping_items(value):
                    cond = self.field_in(src, "k8s.labels", lv, checker, key=label)
                    if cond is None:
                        return None
                    parts.append(cond)
        return And(parts) if len(parts) > 1 else (parts[0] if parts else Const(True))

    def field_in(self, src, fname, value_node, checker, negated=False, key=None):
        """`field in [values]` built from YAML values (a scalar or a sequence)."""
        at = Loc(src.node_where(value_node), 0)
        if value_node.tag == "tag:yaml.org,2002:str" and value_node.value in self.env.lists:
            # a bare name of a list: use that list
            cmp = Compare(at, "notin" if negated else "in", Name(at, fname, key), Name(at, value_node.value))
            try:
                return checker.compare(cmp)
            except ExprError as e:
                self.problems.append(problem_at(e.at, e.message))
                return None
        nodes = value_node.value if value_node.tag == "tag:yaml.org,2002:seq" else [value_node]
        items = [lit for lit in (self.literal(src, n) for n in nodes) if lit is not None]
        if len(items) != len(nodes):
            return None
        cmp = Compare(at, "notin" if negated else "in", Name(at, fname, key), ListLit(at, items))
        try:
            return checker.compare(cmp)
        except ExprError as e:
            self.problems.append(problem_at(e.at, e.message))
            return None

    def exception_tree(self, exc: _ExceptionDef, checker):
        parts = []
        for src, fname, knode, vnode in exc.when:
            if catalog.lookup(fname) is None:
                self.problem(src, knode, f"exception: unknown field '{fname}'")
                return None
            cond = self.field_in(src, fname, vnode, checker)
            if cond is None:
                return None
            parts.append(cond)
        if exc.expression is not None:
            try:
                parts.append(checker.condition(exc.expression))
            except ExprError as e:
                self.problems.append(problem_at(e.at, f"exception: {e.message}"))
                return None
        return And(parts) if len(parts) > 1 else parts[0]


_CONSTANT_NAMES = None


def catalog_constants():
    global _CONSTANT_NAMES
    if _CONSTANT_NAMES is None:
        from .constants import CONSTANTS
        _CONSTANT_NAMES = set(CONSTANTS)
    return _CONSTANT_NAMES


def compile_sources(sources: list[Source]) -> RuleSet:
    b = _Builder()
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.text.encode() + b"\0")
        b.add_source(src)
    checker = Checker(b.env)
    # macros and lists are checked where used; still report broken unused macros
    for m in b.env.macros.values():
        try:
            checker.condition(m.node)
        except ExprError as e:
            b.problems.append(problem_at(e.at, f"macro '{m.name}': {e.message}"))
    built: list[tuple[Rule, object]] = []
    first_at: dict[str, str] = {}
    for src, node in b.rule_defs:
        rid = next((str(v.value) for k, _, v in mapping_items(node) if k == "id"), None)
        if rid is not None and rid in first_at:
            b.problem(src, node, f"duplicate rule id '{rid}' (first defined at {first_at[rid]})", rid)
            continue
        if rid is not None:
            first_at[rid] = f"{src.name}:{node.start_mark.line + 1}"
        result = b.build_rule(src, node, checker)
        if result is not None:
            built.append(result)
    trees = {rule.id: tree for rule, tree in built}
    for exc in b.exceptions:
        etree = b.exception_tree(exc, checker)
        for rid, at in zip(exc.rule_ids, exc.targets_at):
            if rid not in trees:
                b.problems.append(problem_at(at, f"exception for unknown rule '{rid}'"))
                continue
            if etree is None:
                continue
            if not (types_of(etree) & types_of(trees[rid])):
                b.problems.append(problem_at(at, f"exception never applies to rule '{rid}': its fields are for "
                                                 f"{', '.join(sorted(types_of(etree)))} events, the rule matches "
                                                 f"{', '.join(sorted(types_of(trees[rid])))}"))
                continue
            trees[rid] = And([trees[rid], Not(etree)])
    rules = []
    for rule, _ in built:
        tree = trees[rule.id]
        rule.version = rule.version or hashlib.sha256(
            repr((rule.expression, rule.scope, _exceptions_text(b, rule.id))).encode()).hexdigest()[:12]
        spec = {}
        for t in catalog.EVENT_TYPES:
            if t in types_of(tree):
                s = specialize(tree, t)
                if s is not FALSE and not (isinstance(s, Const) and not s.value):
                    spec[t] = s
        if not spec:
            b.problems.append(Problem(rule.file, rule.line, 1, "rule can never match any event", rule.id))
            continue
        rule.specialized = spec
        rule.event_types = frozenset(spec)
        if rule.event_types == ALL_TYPES:
            b.warnings.append(Problem(rule.file, rule.line, 1, "rule matches events of every type (no field selects "
                                      "an event type): the kernel cannot filter for it", rule.id))
        rule._matchers = _rule_matchers(rule)
        rules.append(rule)
    from .correlations import CorrelationCompiler  # imports this module: kept out of its import time
    correlations = CorrelationCompiler(b.problems, b.warnings, {r.id: r for r in rules}, first_at).compile(
        b.correlation_defs)
    if b.problems:
        raise RuleError(sorted(b.problems, key=lambda p: (p.file, p.line, p.col)))
    return RuleSet(rules, [s.name for s in sources], b.warnings, digest.hexdigest(), correlations)


def _exceptions_text(b: _Builder, rid: str) -> str:
    return repr([(e.rule_ids, [(k, to_python(v)) for _, k, _, v in e.when], e.expression is not None)
                 for e in b.exceptions if rid in e.rule_ids])
