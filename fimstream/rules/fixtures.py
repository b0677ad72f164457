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

Events are completed with schema defaults and round-tripped through the EnrichedEvent Avro codec, so a
fixture is exactly what the detector decodes. Every enabled rule needs at least one matching and one
non-matching case.
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
            rid = str(case.get("rule", "?"))
            expected = bool(case.get("match", True))
            res = CaseResult(str(path), line, rid, expected, None, case.get("description", ""))
            rule = ruleset.by_id.get(rid)
            if rule is None:
                res.error = f"unknown rule '{rid}'"
            else:
                try:
                    event = make_event(case.get("event") or {})
                    res.got = any(r.id == rid for r in ruleset.match(event))
                except Exception as e:  # a broken fixture is a failed case, not a crash
                    res.error = f"bad fixture event: {type(e).__name__}: {e}"
                seen.setdefault(rid, set()).add(expected)
            report.cases.append(res)
        loader.dispose()
    for r in ruleset.enabled_rules:
        kinds = seen.get(r.id, set())
        for want, label in ((True, "a matching case"), (False, "a non-matching look-alike")):
            if want not in kinds:
                report.untested.append((r.id, label))
    return report
