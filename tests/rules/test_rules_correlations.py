"""The `correlations:` section of rule files: what it compiles to, `same` fields resolved per step type,
signal-only rules, and problems reported with file:line:col. The engine itself: tests/detector."""
from __future__ import annotations

import pytest

from fimstream.rules import RuleError, RuleSetHolder, make_event
from fimstream.rules.correlations import format_duration, parse_duration
from fimstream.rules.fixtures import run_fixtures
from rules_helpers import problems, rules

S = 1_000_000_000
RULES = '''rules:
  - id: tmp_write
    expression: create.file.path =~ "/tmp/**" || write.file.path =~ "/tmp/**"
    actions: [signal]
  - id: tmp_exec
    expression: exec.file.path =~ "/tmp/**"
    score: 40
  - id: shm_exec
    expression: exec.file.path =~ "/dev/shm/**"
    score: 60
  - id: nc_connect
    expression: connect.addr.port == 4444
  - id: log_rm
    expression: unlink.file.path =~ "/var/log/**"
  - id: old_rule
    expression: open.file.path == "/x"
    enabled: false
'''


def with_correlations(text: str) -> str:
    return RULES + "correlations:\n" + text


def test_three_kinds_compile_with_their_settings():
    rs = rules(with_correlations(
        "  - id: dropper\n    description: dropped then run\n    sequence: [tmp_write, [tmp_exec, shm_exec]]\n"
        "    same: [file.path, process.uid]\n    within: 2m\n    severity: critical\n    tags: [T1105]\n"
        "  - id: mass_rm\n    threshold: {rules: [log_rm], count: 20}\n    within: 90s\n    by: process\n"
        "  - id: risk\n    score: {min: 100}\n    within: 5m\n    by: pod\n    enabled: false\n"))
    dropper, mass_rm, risk = rs.correlations
    assert (dropper.kind, dropper.steps, dropper.window_ns, dropper.by) == (
        "sequence", ("tmp_write", ("tmp_exec", "shm_exec")), 120 * S, "container")
    assert dropper.step_sets == (frozenset({"tmp_write"}), frozenset({"tmp_exec", "shm_exec"}))
    assert (dropper.severity, dropper.tags, dropper.description, dropper.line) == ("critical", ("T1105",),
                                                                                   "dropped then run", 19)
    assert dropper.same_fields == ("file.path", "process.uid") and len(dropper.same) == 2
    assert (mass_rm.kind, mass_rm.steps, mass_rm.count, mass_rm.window_ns, mass_rm.by) == (
        "threshold", ("log_rm",), 20, 90 * S, "process")
    assert mass_rm.severity == "high"  # the default: stronger evidence than any single step
    assert (risk.kind, risk.min_score, risk.by, risk.enabled) == ("score", 100.0, "pod", False)
    assert rs.enabled_correlations == (dropper, mass_rm) and rs.correlation_by_id["risk"] is risk


def test_same_field_is_resolved_for_each_step_event_type():
    rs = rules(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    same: [file.path]\n"
                                 "    within: 1m\n"))
    (read,) = rs.correlations[0].same
    for etype in ("create", "write", "exec"):
        assert read(make_event({"event_type": etype, "file": "/tmp/a"})) == b"/tmp/a"


def test_same_field_with_different_code_per_type_dispatches_on_the_event_type():
    # open.flags is E["flags"], mmap.flags is E["flags"] >> 32: one logical field, two readers
    rs = rules('rules:\n  - id: o\n    expression: open.file.path == "/x"\n'
               '  - id: m\n    expression: mmap.file.path == "/x"\n'
               'correlations:\n  - id: c\n    sequence: [o, m]\n    same: [flags]\n    within: 1m\n')
    (read,) = rs.correlations[0].same
    assert read(make_event({"event_type": "open", "file": "/x", "flags": 5})) == 5
    assert read(make_event({"event_type": "mmap", "file": "/x", "flags": (7 << 32) | 3})) == 7


def test_signal_rules_match_without_alerting_and_idle_signals_warn():
    rs = rules(RULES)
    assert rs.by_id["tmp_write"].signal_only and not rs.by_id["tmp_exec"].signal_only
    assert [r.id for r in rs.match(make_event({"event_type": "create", "file": "/tmp/a"}))] == ["tmp_write"]
    # nothing uses tmp_write here: it can have no effect
    [w] = [str(w) for w in rs.warnings if "signal" in str(w)]
    assert w.startswith("t.yaml:2:1:") and "feeds no correlation" in w and "(rule tmp_write)" in w
    rs = rules(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n"))
    assert not [w for w in rs.warnings if "signal" in str(w)]


def test_signal_cannot_be_combined_with_other_actions():
    (p,) = problems('rules:\n  - id: r\n    expression: open.file.path == "/x"\n    actions: [signal, kill]\n')
    assert p.startswith("t.yaml:4:14: actions: signal means no alert of its own")


def test_disabled_steps_and_unscored_risk_are_warnings():
    rs = rules(with_correlations("  - id: d\n    sequence: [old_rule, tmp_exec]\n    within: 1m\n"))
    [w] = [str(w) for w in rs.warnings if "disabled" in str(w)]
    assert w == ("t.yaml:20:16: rule 'old_rule' is disabled (enabled: false): it never matches, so it never "
                 "feeds this correlation (correlation d)")
    rs = rules('rules:\n  - id: r\n    expression: open.file.path == "/x"\n'
               'correlations:\n  - id: risk\n    score: {min: 10}\n    within: 1m\n')
    assert any("no enabled rule has a `score:`" in str(w) and str(w).startswith("t.yaml:5:5:") for w in rs.warnings)


@pytest.mark.parametrize("entry,where,message", [
    ("  - id: c\n    sequence: [tmp_write, tmp_exek]\n    within: 1m\n", "20:27", "unknown rule 'tmp_exek' (did you mean 'tmp_exec'?)"),
    ("  - id: c\n    sequence: [tmp_write]\n    within: 1m\n", "20:15", "at least two rule ids"),
    ("  - id: c\n    sequence: [tmp_write, []]\n    within: 1m\n", "20:27", "an empty step"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 2 minutes\n", "21:13", "within: expected a duration"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 120\n", "21:13", "within: expected a duration"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 0s\n", "21:13", "within: expected a duration"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n", "19:5", "correlation without `within:`"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n    by: node\n", "22:9",
     "by: expected one of host, container, pod, process, got 'node'"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n    severity: urgent\n", "22:15",
     "severity: expected one of"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n    tags: [T99]\n", "22:11",
     "'T99' is not a MITRE ATT&CK id"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n    after: 5\n", "22:5",
     "unknown correlation key 'after'"),
    ("  - id: c\n    within: 1m\n", "19:5", "expected exactly one of sequence"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    score: {min: 3}\n    within: 1m\n", "21:5",
     "expected exactly one of sequence"),
    ("  - id: tmp_exec\n    score: {min: 3}\n    within: 1m\n", "19:9",
     "duplicate id 'tmp_exec': a rule of that id is defined at t.yaml:5"),
    ("  - id: c\n    score: {min: 3}\n    within: 1m\n  - id: c\n    score: {min: 4}\n    within: 1m\n", "22:9",
     "duplicate correlation id 'c' (first defined at t.yaml:19)"),
    ("  - id: c\n    threshold: {rule: log_rm, count: 1}\n    within: 1m\n", "20:38", "count:` an integer >= 2"),
    ("  - id: c\n    threshold: {count: 5}\n    within: 1m\n", "20:16", "expected `rule: <id>` or `rules: [ids]`"),
    ("  - id: c\n    threshold: {rule: log_rm, count: 5, by: x}\n    within: 1m\n", "20:41",
     "unknown threshold key 'by'"),
    ("  - id: c\n    threshold: {rule: log_rm, count: 5}\n    same: [file.path]\n    within: 1m\n", "21:5",
     "same: only a sequence joins"),
    ("  - id: c\n    score: {min: -5}\n    within: 1m\n", "20:18", "score: expected `min:` a positive number"),
    ("  - id: c\n    score: 100\n    within: 1m\n", "20:12", "score: expected {min: <total>}"),
    ("  - id: c\n    sequence: [tmp_write, nc_connect]\n    same: [file.path]\n    within: 1m\n", "21:12",
     "'file.path' does not exist for connect events (step 2: rule nc_connect matches connect)"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    same: [exec.file.path]\n    within: 1m\n", "21:12",
     "'exec.file.path' names an event type: write `file.path`"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    same: [file.pth]\n    within: 1m\n", "21:12",
     "unknown field 'file.pth' (did you mean 'file.path'?)"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    same: [process.argv]\n    within: 1m\n", "21:12",
     "'process.argv' is an array field"),
    ("  - id: c\n    sequence: [tmp_write, tmp_exec]\n    same: [file.deleted, flags]\n    within: 1m\n", "21:26",
     "'flags' does not exist for create events (step 1: rule tmp_write matches create)"),
    ("  - description: no id\n    score: {min: 3}\n    within: 1m\n", "19:5", "correlation without id"),
])
def test_problems_name_file_line_column_and_what_was_expected(entry, where, message):
    ps = problems(with_correlations(entry))
    assert any(p.startswith(f"t.yaml:{where}: ") and message in p for p in ps), ps


def test_same_field_must_have_one_type_across_steps(monkeypatch):
    # no logical field of today's catalog changes type between event types; a future one must not be joinable
    from fimstream.rules import fields as catalog
    monkeypatch.setitem(catalog.FIELDS, "exec.flags", catalog.Field("exec.flags", "str", "test", 'A.get("f", "")',
                                                                      frozenset(["exec"])))
    ps = problems('rules:\n  - id: o\n    expression: open.file.path == "/x"\n'
                  '  - id: e\n    expression: exec.file.path == "/x"\n'
                  'correlations:\n  - id: c\n    sequence: [o, e]\n    same: [flags]\n    within: 1m\n')
    assert any(p.startswith("t.yaml:9:12:") and "'flags' has different types across the steps (int on open, str on exec)" in p for p in ps), ps


def test_every_correlation_problem_is_reported_at_once_with_rule_problems():
    ps = problems(with_correlations("  - id: a\n    sequence: [nope, tmp_exec]\n    within: soon\n"
                                    "  - id: b\n    threshold: {rule: log_rm}\n    within: 1m\n    by: galaxy\n")
                  + "  - id: bad\n    expression: open.file.path ==\n")
    assert len(ps) >= 5
    assert ps == sorted(ps, key=lambda p: tuple(int(x) for x in p.split(":")[1:3]))


def test_correlations_are_part_of_the_rule_set_version(tmp_path):
    base = rules(RULES)
    a = rules(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n"))
    b = rules(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    within: 2m\n"))
    assert len({base.version, a.version, b.version}) == 3
    # the engine keeps state across reloads when kind, steps, same and by are unchanged (not window/count)
    assert a.correlations[0].state_version == b.correlations[0].state_version
    c = rules(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    same: [file.path]\n"
                                "    within: 1m\n"))
    assert c.correlations[0].state_version != a.correlations[0].state_version


def test_correlations_reload_with_the_rules_and_a_bad_one_keeps_the_old_set(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(with_correlations("  - id: d\n    sequence: [tmp_write, tmp_exec]\n    within: 1m\n"))
    holder = RuleSetHolder(tmp_path)
    assert [c.id for c in holder.current.correlations] == ["d"]
    result = holder.apply_control(b"correlations:\n  - id: mass\n    threshold: {rule: log_rm, count: 3}\n"
                                  b"    within: 1m\n")
    assert result.ok and result.changed and [c.id for c in holder.current.correlations] == ["d", "mass"]
    old = holder.current
    bad = holder.apply_control(b"correlations:\n  - id: mass\n    threshold: {rule: log_rn, count: 3}\n"
                               b"    within: 1m\n")
    assert not bad.ok and holder.current is old and "<control>:3:23: unknown rule 'log_rn'" in str(bad.error)


def test_durations():
    assert parse_duration("2m") == 120 * S and parse_duration(" 500ms ") == S // 2 and parse_duration("1d") == 86400 * S
    assert parse_duration("0s") is None and parse_duration(30) is None and parse_duration("2 m x") is None
    assert format_duration(120 * S) == "2m" and format_duration(90 * S) == "90s" and format_duration(1500) == "1500ns"


# ------------------------------------------------------------------------------- fixtures (rules test)
FIXTURE_RULES = with_correlations(
    "  - id: dropper\n    sequence: [tmp_write, tmp_exec]\n    same: [file.path]\n    within: 2m\n"
    "  - id: mass_rm\n    threshold: {rule: log_rm, count: 3}\n    within: 1m\n    by: process\n")


def test_correlation_fixtures_run_event_lists_through_the_engine(tmp_path):
    rs = rules(FIXTURE_RULES)
    f = tmp_path / "c.yaml"
    f.write_text('''
- correlation: dropper
  events:
    - {event_type: create, file: /tmp/x}
    - {at: 90s, event_type: exec, file: /tmp/x}
- correlation: dropper
  match: false
  events:
    - {event_type: create, file: /tmp/x}
    - {at: 3m, event_type: exec, file: /tmp/x}
- correlation: dropper
  description: wrong expectation (it does fire)
  match: false
  events:
    - {event_type: create, file: /tmp/y}
    - {event_type: exec, file: /tmp/y}
- correlation: mass_rm
  events: [{event_type: unlink, file: /var/log/a, repeat: 3, every: 20s}]
- correlation: mass_rm
  match: false
  events: [{event_type: unlink, file: /var/log/a, repeat: 3, every: 40s}]
- correlation: nope
  events: [{event_type: unlink, file: /var/log/a}]
- correlation: mass_rm
  events: [{event_type: unlink, file: /var/log/a, repeat: many}]
''')
    report = run_fixtures(rs, [f])
    outcome = [(c.rule, c.ok) for c in report.cases]
    assert outcome == [("dropper", True), ("dropper", True), ("dropper", False), ("mass_rm", True),
                       ("mass_rm", True), ("nope", False), ("mass_rm", False)]
    assert "expected no match, got match" in str(report.cases[2])
    assert "unknown correlation 'nope'" in report.cases[5].error
    assert "repeat" in report.cases[6].error
    assert ("dropper", "a matching case") not in report.untested
    assert ("tmp_exec", "a matching case") in report.untested  # rules still need their own cases


def test_rules_test_cli_names_correlations_without_fixtures(tmp_path, capsys):
    from fimstream.rules.cli import main
    (tmp_path / "r.yaml").write_text(FIXTURE_RULES)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "c.yaml").write_text(
        "- correlation: dropper\n  events: [{event_type: create, file: /tmp/x}, {event_type: exec, file: /tmp/x}]\n")
    assert main(["rules", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL correlation dropper has no fixture with a non-matching look-alike" in out
    assert "FAIL correlation mass_rm has no fixture with a matching case" in out
    assert "FAIL rule tmp_exec has no fixture" in out
    assert main(["rules", "explain", str(tmp_path), "--no-inodes"]) == 0
    out = capsys.readouterr().out
    assert ("dropper: tmp_write then tmp_exec, same file.path (create.file.path, exec.file.path, write.file.path) "
            "within 2m per container") in out
    assert "mass_rm: 3 matches of log_rm within 1m per process" in out
