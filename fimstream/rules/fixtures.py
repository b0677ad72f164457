"""Rule unit tests: YAML fixtures (an event and whether a rule must match it) run against a rule set.

A fixture file (rules/tests/*.yaml) is a list of cases:

    - rule: etc_write
      match: true                 # false: a benign look-alike that must stay quiet
      description: vim rewrites /etc/hosts
      event:
        event_type: open
        file: /etc/hosts          # a path, or {path: ..., mode: ..., ino: ...}
        flags: O_WRONLY|O_TRUNC   # integers may be written as constant expressions
        process: {exe: /usr/bin/vim, comm: vim, uid: 0, ancestors: [{comm: sshd, exe: /usr/sbin/sshd}]}

A correlation case lists events instead, run in order through the rules and the detector's correlation
engine; `match` says whether the correlation must fire on any of them:

    - correlation: dropper_executed
      description: a binary dropped in /tmp and run 30 s later
      events:
        - {event_type: create, file: /tmp/.x}
        - {at: 30s, event_type: exec, file: /tmp/.x}        # at: time from the first event
        - {event_type: unlink, file: /var/log/a, repeat: 20, every: 2s}   # 20 copies, 2 s apart

Event times start at a fixed instant; an event without `at` comes 1 s after the previous one. Events of a
case share host, process and container unless they say otherwise.

Events are completed with schema defaults and round-tripped through the EnrichedEvent Avro codec, so a
fixture is exactly what the detector decodes. Every enabled rule and correlation needs at least one
matching and one non-matching case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fimstream.events import enriched_event, file_record

from .compiler import Checker, Env
from .errors import ExprError, Loc
from .ir import VConst
from .ruleset import RuleSet
from .syntax import parse

_BYTES_PROCESS = ("exe", "cgroup")


def _int(value, what: str):
    if isinstance(value, bool) or isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            v = Checker(Env()).value(parse(value, lambda off: ("<fixture>", 1, off + 1)))
        except ExprError as e:
            raise ValueError(f"{what}: {e.message}") from None
        if isinstance(v, VConst) and v.type in ("int", "duration"):
            return v.value
    raise ValueError(f"{what}: expected an integer or a constant expression, got {value!r}")


def _b(v):
    return v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v


def _file(spec, what):
    if spec is None:
        return None
    if isinstance(spec, (str, bytes)):
        return file_record(_b(spec))
    spec = dict(spec)
    path = _b(spec.pop("path", b""))
    for k in list(spec):
        spec[k] = _int(spec[k], f"{what}.{k}")
    return file_record(path, **spec)


_T0 = 1_700_000_000 * 1_000_000_000  # correlation cases: event time of the first event
_SECOND = 1_000_000_000
_INT_TOP = ("flags", "mode", "owner_uid", "owner_gid", "retval", "exit_code", "time_ns")


def make_event(spec: dict) -> dict:
    """A complete EnrichedEvent dict from a partial fixture spec (str paths become bytes)."""
    spec = dict(spec)
    etype = spec.pop("event_type", "open")
    proc = dict(spec.pop("process", {}) or {})
    for k in _BYTES_PROCESS:
        if k in proc:
            proc[k] = _b(proc[k])
    if "args" in proc:
        proc["args"] = [_b(a) for a in proc["args"]]
    if "ancestors" in proc:
        proc["ancestors"] = [{"pid": a.get("pid", 1), "comm": a.get("comm", ""), "exe": _b(a.get("exe", b""))}
                             for a in proc["ancestors"]]
    for k in ("pid", "tid", "ppid", "uid", "gid", "euid", "egid", "auid", "exe_ino", "exe_dev", "start_time_ns"):
        if k in proc:
            proc[k] = _int(proc[k], f"process.{k}")
    fields = {"process": proc}
    for k in ("file", "target"):
        if k in spec:
            fields[k] = _file(spec.pop(k), k)
    for k in _INT_TOP:
        if k in spec:
            fields[k] = _int(spec.pop(k), k)
    if "cred" in spec:
        cred = {k: 0 for k in ("old_caps", "new_caps")}
        cred.update({k: _int(v, f"cred.{k}") for k, v in spec.pop("cred").items()})
        for k in ("old_uid", "old_euid", "old_gid", "old_egid", "new_uid", "new_euid", "new_gid", "new_egid"):
            cred.setdefault(k, 0)
        fields["cred"] = cred
    if "net" in spec:
        net = {"family": 2, "protocol": 6, "local_addr": "", "local_port": 0, "remote_addr": "", "remote_port": 0}
        for k, v in spec.pop("net").items():
            net[k] = _int(v, f"net.{k}") if k in ("family", "protocol", "local_port", "remote_port") else v
        fields["net"] = net
    fields.update(spec)  # attrs, container_id, k8s, syscall, ...
    return _roundtrip(enriched_event(etype, **fields))


_codec = None


def _roundtrip(event: dict) -> dict:
    global _codec
    if _codec is None:
        from fimstream.schemas.codec import Codecs
        _codec = Codecs().enriched
    return _codec.decode_batch(_codec.encode_batch([event]))[0]


@dataclass
class CaseResult:
    file: str
    line: int
    rule: str
    expected: bool
    got: bool | None
    description: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.got == self.expected

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        what = self.error or f"expected {'match' if self.expected else 'no match'}, got {'match' if self.got else 'no match'}"
        return f"{status:4} {self.file}:{self.line} {self.rule}: {self.description or ''} {'' if self.ok else '- ' + what}"


@dataclass
class FixtureReport:
    cases: list = field(default_factory=list)
    untested: list = field(default_factory=list)  # (rule id, missing "match"/"no match")

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases) and not self.untested and bool(self.cases)

    @property
    def failures(self) -> list:
        return [c for c in self.cases if not c.ok]


def fixture_files(rules_dir) -> list[Path]:
    d = Path(rules_dir) / "tests"
    return sorted(p for p in d.glob("*.y*ml")) if d.is_dir() else []


def run_fixtures(ruleset: RuleSet, files) -> FixtureReport:
    report = FixtureReport()
    seen: dict[str, set] = {}
    for path in files:
        text = Path(path).read_text(encoding="utf-8")
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            report.cases.append(CaseResult(str(path), (mark.line + 1) if mark else 1, "?", True, None,
                                           error=f"YAML: {e.problem}"))
            continue
        if root is None:
            continue
        loader = yaml.SafeLoader("")
        for node in root.value if root.tag == "tag:yaml.org,2002:seq" else []:
            line = node.start_mark.line + 1
            case = loader.construct_object(node, deep=True)
            if not isinstance(case, dict):
                report.cases.append(CaseResult(str(path), line, "?", True, None, error="expected a mapping"))
                continue
            expected = bool(case.get("match", True))
            if "correlation" in case:
                cid = str(case["correlation"])
                res = CaseResult(str(path), line, cid, expected, None, case.get("description", ""))
                _run_correlation_case(ruleset, cid, case, res)
                if cid in ruleset.correlation_by_id:
                    seen.setdefault(cid, set()).add(expected)
                report.cases.append(res)
                continue
            rid = str(case.get("rule", "?"))
            res = CaseResult(str(path), line, rid, expected, None, case.get("description", ""))
            rule = ruleset.by_id.get(rid)
            if rule is None:
                res.error = f"unknown rule '{rid}'" if "rule" in case else "expected `rule:` or `correlation:`"
            else:
                try:
                    event = make_event(case.get("event") or {})
                    res.got = any(r.id == rid for r in ruleset.match(event))
                except Exception as e:  # a broken fixture is a failed case, not a crash
                    res.error = f"bad fixture event: {type(e).__name__}: {e}"
                seen.setdefault(rid, set()).add(expected)
            report.cases.append(res)
        loader.dispose()
    for item in (*ruleset.enabled_rules, *ruleset.enabled_correlations):
        kinds = seen.get(item.id, set())
        for want, label in ((True, "a matching case"), (False, "a non-matching look-alike")):
            if want not in kinds:
                report.untested.append((item.id, label))
    return report


def correlation_events(specs) -> list[dict]:
    """The events of a correlation case, with their times (see the module doc: at, repeat, every)."""
    if not isinstance(specs, list) or not specs:
        raise ValueError("events: expected a list of events")
    out, t = [], None
    for spec in specs:
        spec = dict(spec)
        at = spec.pop("at", None)
        repeat = _int(spec.pop("repeat", 1), "repeat")
        every = _int(spec.pop("every", "1s"), "every")
        t = _int(at, "at") if at is not None else (0 if t is None else t + _SECOND)
        for i in range(repeat):
            if i:
                t += every
            out.append(make_event(dict(spec, time_ns=_T0 + t)))
    return out


def _run_correlation_case(ruleset: RuleSet, cid: str, case: dict, res: CaseResult) -> None:
    correlation = ruleset.correlation_by_id.get(cid)
    if correlation is None:
        res.error = f"unknown correlation '{cid}'"
        return
    from fimstream.detector.correlate import Correlator  # the engine the detector runs
    try:
        events = correlation_events(case.get("events"))
    except Exception as e:  # a broken fixture is a failed case, not a crash
        res.error = f"bad fixture events: {type(e).__name__}: {e}"
        return
    engine = Correlator([correlation])
    res.got = False
    for event in events:
        for rule in ruleset.match(event):
            if engine.observe(event, rule.id, rule.score):
                res.got = True
