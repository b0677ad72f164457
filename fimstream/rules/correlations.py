"""Stateful detections written in rule files: the `correlations:` section, checked and compiled into
Correlation definitions. The detector's engine (fimstream.detector.correlate) runs them; the language
only defines them, so it never depends on the detector.

    correlations:
      - id: dropper_executed
        sequence: [tmp_file_written, [exec_from_tmp, exec_from_dev_shm]]   # rule ids in order; [a, b]: either
        same: [file.path]       # equal at every step; written without the event type (see below)
        within: 2m              # all steps within this much event time of the first
        by: container           # host | container | pod | process
      - id: mass_log_deletion
        threshold: {rules: [log_deleted, log_truncated], count: 20}       # or rule: <id>
        within: 1m
        by: process
      - id: container_risk
        score: {min: 100}       # sum of the `score:` of every rule match of the entity
        within: 5m

`same` fields. A step's events have their own types and SECL names a field by its type (`write.file.path`,
`exec.file.path`), so a `same` field is written without the type: `file.path` means, for each event, the
field `<its type>.file.path`. It must exist for every event type every step's rules can match. Fields of
every event (`process.*`, `container.id`, `k8s.*`) are written as they are.
"""
from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from . import fields as catalog
from .constants import DURATION_UNITS
from .errors import Problem
from .ruleset import _ATTACK_RE, _ID_RE, SEVERITIES, Rule
from .yamlsrc import Source, mapping_items, to_python

KINDS = ("sequence", "threshold", "score")
CORRELATION_KEYS = {"id", "description", "sequence", "threshold", "score", "same", "within", "by", "severity",
                    "tags", "enabled"}
THRESHOLD_KEYS = {"rule", "rules", "count"}
SCORE_KEYS = {"min"}
DEFAULT_SEVERITY = "high"  # a correlation is stronger evidence than any of its steps

ENTITY_KEYS: dict[str, Callable[[dict], tuple]] = {
    "host": lambda e: (e["host"],),
    "container": lambda e: (e["host"], e.get("container_id") or ""),  # host processes: container ""
    "pod": lambda e: ((e.get("k8s") or {}).get("namespace", ""), (e.get("k8s") or {}).get("pod", ""))
    if (e.get("k8s") or {}).get("pod") else (e["host"], e.get("container_id") or ""),
    "process": lambda e: (e["host"], e["process"]["pid"], e["process"]["start_time_ns"]),
}
_DURATION_RE = re.compile(r"^\s*([0-9]+)\s*(" + "|".join(DURATION_UNITS) + r")\s*$")


@dataclass(frozen=True)
class Correlation:
    """One stateful detection. kind: sequence | threshold | score."""

    id: str
    kind: str
    window_ns: int
    by: str = "container"
    # sequence: one entry per step, a rule id or a tuple of alternative rule ids; threshold: the rules counted
    steps: tuple = ()
    same: tuple[Callable[[dict], object], ...] = field(default=(), compare=False)  # sequence: join values
    count: int = 0  # threshold: matches needed
    min_score: float = 0.0  # score: total needed
    severity: str = "high"
    description: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    same_fields: tuple[str, ...] = ()  # `same` as written (the readers above are compiled from them)
    file: str = ""
    line: int = 0
    # What the engine's state for this correlation depends on (kind, steps, same, by). Equal non-empty
    # values across a reload: the engine keeps the state. Window, count and min only change the decision.
    state_version: str = ""

    def key(self, event: dict) -> tuple:
        return ENTITY_KEYS[self.by](event)

    @cached_property
    def step_sets(self) -> tuple[frozenset, ...]:
        """Sequence steps as sets of rule ids (an alternative step has several)."""
        return tuple(frozenset([s]) if isinstance(s, str) else frozenset(s) for s in self.steps)

    @cached_property
    def rule_ids(self) -> frozenset:
        """Every rule whose matches this correlation observes (score: none; it takes every scored match)."""
        return frozenset().union(*self.step_sets) if self.steps else frozenset()

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


def parse_duration(value) -> int | None:
    """`2m`, `30s`, `1h` -> nanoseconds; None unless a positive whole number with a unit."""
    if not isinstance(value, str):
        return None
    m = _DURATION_RE.match(value)
    if not m or int(m.group(1)) == 0:
        return None
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]


def format_duration(ns: int) -> str:
    """The largest unit that writes `ns` exactly: 120 s -> "2m"."""
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda kv: -kv[1]):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


# ------------------------------------------------------------------------------------- `same` fields
def resolve_same(name: str, step_types: list[tuple[int, str, frozenset]]) -> tuple[dict | None, str]:
    """`same` field `name` for the event types of each step: ({event type: Field}, "") or (None, why not).
    step_types: (step number, rule id, event types the rule matches)."""
    first = name.split(".", 1)[0]
    if first in catalog.EVENT_TYPES and "." in name:
        rest = name.split(".", 1)[1]
        return None, (f"'{name}' names an event type: write `{rest}`, which each step reads from its own event "
                      f"type ({first}.{rest} on a {first} event, exec.{rest} on an exec...)")
    types = sorted({t for _, _, ts in step_types for t in ts})
    common = catalog.lookup(name)
    if common is not None and common.event_types is None:
        resolved = {t: common for t in types}
    else:
        resolved, missing = {}, []
        for step, rid, ts in step_types:
            for t in sorted(ts):
                f = catalog.FIELDS.get(f"{t}.{name}")
                if f is None:
                    missing.append((step, rid, t))
                else:
                    resolved[t] = f
        if not resolved and not any(f"{t}.{name}" in catalog.FIELDS for t in catalog.EVENT_TYPES):
            return None, f"unknown field '{name}'{_suggest_suffix(name)}"
        if missing:
            step, rid, t = missing[0]
            return None, (f"'{name}' does not exist for {t} events (step {step}: rule {rid} matches {t}): a `same` "
                          f"field must exist for every event type of every step")
    arrays = [f.name for f in resolved.values() if f.is_array]
    if arrays:
        return None, f"'{name}' is an array field ({arrays[0]}): `same` needs one value per event"
    kinds = {}
    for t, f in resolved.items():
        kinds.setdefault(f.type, t)
    if len(kinds) > 1:
        shown = ", ".join(f"{k} on {t}" for k, t in kinds.items())
        return None, f"'{name}' has different types across the steps ({shown}): values could never be equal"
    return resolved, ""


def _suggest_suffix(name: str) -> str:
    pool = {f.name.split(".", 1)[1] if f.event_types is not None else f.name for f in catalog.FIELDS.values()}
    close = difflib.get_close_matches(name, sorted(pool), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def same_reader(resolved: dict) -> Callable[[dict], object]:
    """One fast reader for a resolved `same` field. Most resolve to one piece of code for every type
    (`file.path` is F["path"] on write, create and exec alike): then it is that field's compiled reader.
    Otherwise the reader dispatches on the event type."""
    fields = list(resolved.values())
    if len({(f.code, f.each) for f in fields}) == 1:
        return fields[0].read
    table = {t: f.read for t, f in resolved.items()}

    def read(event, _get=table.get):
        fn = _get(event["event_type"])
        return fn(event) if fn is not None else object()  # cannot happen for a step's own types; joins nothing
    return read


# ------------------------------------------------------------------------------------------- compiling
@dataclass
class _Def:
    src: Source
    node: object


class CorrelationCompiler:
    """Checks `correlations:` entries against the compiled rules; problems and warnings (with file:line:col)
    are appended to the lists given. Correlation ids share one namespace with rule ids."""

    def __init__(self, problems: list, warnings: list, rules: dict[str, Rule], declared: dict[str, str]):
        self.problems = problems
        self.warnings = warnings
        self.rules = rules  # rule id -> Rule, for the rules that compiled
        self.declared = declared  # every rule id declared (compiled or not) -> where

    def compile(self, defs: list[_Def]) -> list[Correlation]:
        out, first_at = [], {}
        for d in defs:
            keys = {k: (kn, v) for k, kn, v in mapping_items(d.node)}
            cid_node = keys.get("id", (None, None))[1]
            cid = str(cid_node.value) if cid_node is not None else None
            if cid is None:
                self.problem(d.src, d.node, "correlation without id")
                continue
            where = f"{d.src.name}:{d.node.start_mark.line + 1}"
            if cid in self.declared:
                self.problem(d.src, cid_node, f"duplicate id '{cid}': a rule of that id is defined at "
                                              f"{self.declared[cid]} (rules and correlations share ids)", cid)
                continue
            if cid in first_at:
                self.problem(d.src, cid_node, f"duplicate correlation id '{cid}' (first defined at {first_at[cid]})",
                             cid)
                continue
            first_at[cid] = where
            c = self.one(d.src, d.node, keys, cid, cid_node)
            if c is not None:
                out.append(c)
        self.warn_idle_signals(out)
        return out

    def one(self, src, node, keys, cid, cid_node) -> Correlation | None:
        errors_before = len(self.problems)
        self.refs = []  # (rule id, node) of every rule this correlation names
        for k, (kn, _) in keys.items():
            if k not in CORRELATION_KEYS:
                self.problem(src, kn, f"unknown correlation key '{k}': expected one of "
                                      f"{', '.join(sorted(CORRELATION_KEYS))}", cid)
        if not _ID_RE.match(cid):
            self.problem(src, cid_node, f"bad correlation id '{cid}': letters, digits, _ . - (starting with a letter)",
                         cid)
        kinds = [k for k in KINDS if k in keys]
        if len(kinds) != 1:
            at = keys[kinds[1]][0] if len(kinds) > 1 else node
            self.problem(src, at, "expected exactly one of sequence: [rule ids], threshold: {rule, count} or "
                                  "score: {min}", cid)
            return None
        kind = kinds[0]
        spec_node = keys[kind][1]
        steps, count, min_score = (), 0, 0.0
        if kind == "sequence":
            steps = self.sequence(src, spec_node, cid)
        elif kind == "threshold":
            steps, count = self.threshold(src, spec_node, cid)
        else:
            min_score = self.score(src, spec_node, cid)

        window = None
        if "within" not in keys:
            self.problem(src, node, "correlation without `within:` (its time window, e.g. 2m)", cid)
        else:
            wnode = keys["within"][1]
            window = parse_duration(to_python(wnode))
            if window is None:
                self.problem(src, wnode, f"within: expected a duration such as 30s, 2m or 1h (units: "
                                         f"{', '.join(DURATION_UNITS)}), got {wnode.value!r}", cid)
        by = self.scalar(src, keys, "by", "container", cid)
        if by not in ENTITY_KEYS:
            self.problem(src, keys["by"][1], f"by: expected one of {', '.join(ENTITY_KEYS)}, got {by!r}", cid)
        severity = self.scalar(src, keys, "severity", DEFAULT_SEVERITY, cid)
        if severity not in SEVERITIES:
            self.problem(src, keys["severity"][1], f"severity: expected one of {', '.join(SEVERITIES)}, got "
                                                   f"{severity!r}", cid)
        description = self.scalar(src, keys, "description", "", cid)
        enabled = self.scalar(src, keys, "enabled", True, cid, bool)
        tags = self.tags(src, keys, cid)

        same_names, readers, resolved_all = (), (), ()
        if "same" in keys:
            snode = keys["same"][1]
            if kind != "sequence":
                self.problem(src, keys["same"][0], f"same: only a sequence joins its steps on field values, not a "
                                                   f"{kind}", cid)
            elif steps:
                same_names, readers, resolved_all = self.same(src, snode, steps, cid)
        if len(self.problems) != errors_before:
            return None
        if kind != "score" and enabled:
            self.warn_disabled(src, cid)
        elif enabled and not any(r.enabled and r.score > 0 for r in self.rules.values()):
            self.warnings.append(self.warning(src, node, "no enabled rule has a `score:`: this score correlation "
                                                         "can never fire", cid))
        state = repr((kind, steps, resolved_all, by))
        return Correlation(
            id=cid, kind=kind, window_ns=window, by=by, steps=steps, same=readers, count=count,
            min_score=min_score, severity=severity, description=description, tags=tags, enabled=enabled,
            same_fields=same_names, file=src.name, line=node.start_mark.line + 1,
            state_version=hashlib.sha256(state.encode()).hexdigest()[:12])

    # -- kinds
    def sequence(self, src, node, cid) -> tuple:
        if node.tag != "tag:yaml.org,2002:seq" or len(node.value) < 2:
            self.problem(src, node, "sequence: expected a list of at least two rule ids, in order (a step may "
                                    "be a list of alternative rule ids)", cid)
            return ()
        steps = []
        for step in node.value:
            if step.tag == "tag:yaml.org,2002:seq":
                alts = tuple(self.rule_ref(src, n, cid) for n in step.value)
                if not alts:
                    self.problem(src, step, "sequence: an empty step: expected rule ids", cid)
                    return ()
                steps.append(alts if len(alts) > 1 else alts[0])
            else:
                steps.append(self.rule_ref(src, step, cid))
        return tuple(steps)

    def threshold(self, src, node, cid) -> tuple[tuple, int]:
        if node.tag != "tag:yaml.org,2002:map":
            self.problem(src, node, "threshold: expected {rule: <id>, count: <n>} or {rules: [ids], count: <n>}", cid)
            return (), 0
        keys = {k: (kn, v) for k, kn, v in mapping_items(node)}
        for k, (kn, _) in keys.items():
            if k not in THRESHOLD_KEYS:
                self.problem(src, kn, f"unknown threshold key '{k}': expected {', '.join(sorted(THRESHOLD_KEYS))}",
                             cid)
        refs = []
        if "rule" in keys:
            refs.append(keys["rule"][1])
        if "rules" in keys:
            v = keys["rules"][1]
            refs += v.value if v.tag == "tag:yaml.org,2002:seq" else [v]
        if not refs:
            self.problem(src, node, "threshold: expected `rule: <id>` or `rules: [ids]` (the matches counted)", cid)
        ids = tuple(dict.fromkeys(self.rule_ref(src, n, cid) for n in refs))
        count = to_python(keys["count"][1]) if "count" in keys else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            self.problem(src, keys["count"][1] if "count" in keys else node,
                         "threshold: expected `count:` an integer >= 2 (one match is the rule itself)", cid)
            count = 0
        return ids, count

    def score(self, src, node, cid) -> float:
        if node.tag != "tag:yaml.org,2002:map":
            self.problem(src, node, "score: expected {min: <total>}", cid)
            return 0.0
        keys = {k: (kn, v) for k, kn, v in mapping_items(node)}
        for k, (kn, _) in keys.items():
            if k not in SCORE_KEYS:
                self.problem(src, kn, f"unknown score key '{k}': expected min", cid)
        value = to_python(keys["min"][1]) if "min" in keys else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            self.problem(src, keys["min"][1] if "min" in keys else node,
                         "score: expected `min:` a positive number (the total of rule scores that fires)", cid)
            return 0.0
        return float(value)

    def rule_ref(self, src, node, cid) -> str:
        if node.tag in ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"):
            self.problem(src, node, "expected a rule id", cid)
            return ""
        rid = str(node.value)  # the text as written, like rule ids (`off` is a rule id here, not false)
        self.refs.append((rid, node))
        if rid not in self.declared:
            close = difflib.get_close_matches(rid, sorted(self.declared), n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.problem(src, node, f"unknown rule '{rid}'{hint}", cid)
        elif rid not in self.rules:
            pass  # declared but broken: its own problem is reported; a second one would only be noise
        return rid

    # -- same
    def same(self, src, node, steps, cid):
        items = node.value if node.tag == "tag:yaml.org,2002:seq" else [node]
        names, readers, resolved_all = [], [], []
        step_types = []
        for i, step in enumerate(steps, 1):
            for rid in ([step] if isinstance(step, str) else step):
                if rid in self.rules:
                    step_types.append((i, rid, self.rules[rid].event_types))
        for item in items:
            if item.tag != "tag:yaml.org,2002:str" or not item.value:
                self.problem(src, item, "same: expected field names, e.g. [file.path]", cid)
                continue
            resolved, why = resolve_same(item.value, step_types)
            if resolved is None:
                self.problem(src, item, f"same: {why}", cid)
                continue
            names.append(item.value)
            readers.append(same_reader(resolved))
            resolved_all.append((item.value, tuple(sorted((t, f.name) for t, f in resolved.items()))))
        return tuple(names), tuple(readers), tuple(resolved_all)

    # -- common keys
    def scalar(self, src, keys, key, default, cid, kind=str):
        if key not in keys:
            return default
        value = to_python(keys[key][1])
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.problem(src, keys[key][1], f"{key}: expected {'true or false' if kind is bool else 'a string'}", cid)
            return default
        return value

    def tags(self, src, keys, cid) -> tuple:
        if "tags" not in keys:
            return ()
        vnode = keys["tags"][1]
        value = to_python(vnode)
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            self.problem(src, vnode, "tags: expected a list of strings", cid)
            return ()
        for t in value:
            if (t[:1] == "T" and t[1:2].isdigit() or t.startswith("TA")) and not _ATTACK_RE.match(t):
                self.problem(src, vnode, f"tags: '{t}' is not a MITRE ATT&CK id (T1234, T1234.001, TA0001)", cid)
        return tuple(value)

    # -- warnings
    def warn_disabled(self, src, cid):
        for rid, node in self.refs:
            r = self.rules.get(rid)
            if r is not None and not r.enabled:
                self.warnings.append(self.warning(src, node, f"rule '{rid}' is disabled (enabled: false): it never "
                                                             "matches, so it never feeds this correlation", cid))

    def warn_idle_signals(self, correlations: list[Correlation]):
        used = set().union(*(c.rule_ids for c in correlations if c.enabled)) if correlations else set()
        scored = any(c.enabled and c.kind == "score" for c in correlations)
        for r in self.rules.values():
            if r.enabled and r.signal_only and r.id not in used and not (scored and r.score > 0):
                self.warnings.append(Problem(r.file, r.line, 1, "signal-only rule (actions: [signal]) feeds no "
                                                                "correlation: it has no effect", r.id))

    def problem(self, src, node, message, cid=None):
        self.problems.append(self.warning(src, node, message, cid))

    def warning(self, src, node, message, cid) -> Problem:
        return Problem(src.name, node.start_mark.line + 1, node.start_mark.column + 1, message, cid, "correlation")
