"""`fimstream rules lint|test|explain|docs`. The lead's fimstream/cli.py calls add_subparsers()."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RuleError

DEFAULT_RULES_DIR = "rules"


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Register `rules` and its subcommands on an argparse subparsers object. Each sets `func(args) -> int`."""
    p = subparsers.add_parser("rules", help="rule language tools: lint, test, explain, docs")
    sub = p.add_subparsers(dest="rules_command", required=True)

    lint = sub.add_parser("lint", help="check rule files; print every problem as file:line:col")
    lint.add_argument("paths", nargs="+", help="rule files or directories (one rule set)")
    lint.set_defaults(func=cmd_lint)

    test = sub.add_parser("test", help="run the rule fixtures in DIR/tests against the rules in DIR")
    test.add_argument("dir", nargs="?", default=DEFAULT_RULES_DIR)
    test.add_argument("-v", "--verbose", action="store_true", help="print passing cases too")
    test.set_defaults(func=cmd_test)

    explain = sub.add_parser("explain", help="print the kernel approvers and what the kernel will pass")
    explain.add_argument("paths", nargs="+")
    explain.add_argument("--json", action="store_true", help="the KernelPolicy as JSON")
    explain.add_argument("--no-inodes", action="store_true", help="do not stat() exact paths")
    explain.set_defaults(func=cmd_explain)

    docs = sub.add_parser("docs", help="print docs/fields.md (the field reference)")
    docs.add_argument("-o", "--output", help="write to this file instead of stdout")
    docs.set_defaults(func=cmd_docs)
    return p


def _load(paths):
    from .ruleset import load_rules
    try:
        return load_rules(paths)
    except RuleError as e:
        for prob in e.problems:
            print(prob, file=sys.stderr)
        print(f"{len(e.problems)} problem(s)", file=sys.stderr)
        return None


def cmd_lint(args) -> int:
    rs = _load(args.paths)
    if rs is None:
        return 1
    for w in rs.warnings:
        print(f"{w} [warning]")
    from .enforcement import compile_policy
    for r in compile_policy(rs).refused:
        rule = rs.by_id[r.rule]
        print(f"{rule.file}:{rule.line}:1: {r} [warning]")
    print(f"ok: {len(rs.rules)} rules ({len(rs.enabled_rules)} enabled), {len(rs.correlations)} correlations "
          f"({len(rs.enabled_correlations)} enabled) in {len(rs.files)} file(s)")
    return 0


def cmd_test(args) -> int:
    from .fixtures import fixture_files, run_fixtures
    rs = _load([args.dir])
    if rs is None:
        return 1
    files = fixture_files(args.dir)
    if not files:
        print(f"no fixtures in {Path(args.dir) / 'tests'}", file=sys.stderr)
        return 1
    report = run_fixtures(rs, files)
    for c in report.cases:
        if args.verbose or not c.ok:
            print(c)
    for rid, what in report.untested:
        kind = "correlation" if rid in rs.correlation_by_id else "rule"
        print(f"FAIL {kind} {rid} has no fixture with {what}")
    passed = sum(c.ok for c in report.cases)
    print(f"{passed}/{len(report.cases)} cases passed, {len(report.untested)} rule(s) missing fixtures")
    return 0 if report.ok else 1


def _fmt_table(d: dict) -> str:
    from fimstream.schemas.codec import text
    items = []
    for k, mask in sorted(d.items(), key=lambda kv: str(kv[0])):
        key = text(k) if isinstance(k, bytes) else (f"dev={k[0]} ino={k[1]}" if isinstance(k, tuple) else str(k))
        items.append(key + (f" (flags & {mask:#o})" if mask else ""))
    return ", ".join(items)


def cmd_explain(args) -> int:
    from .approvers import tree_approvers
    from .ir import describe
    rs = _load(args.paths)
    if rs is None:
        return 1
    policy = rs.kernel_policy(resolve_inodes=not args.no_inodes)
    from .enforcement import compile_policy
    enforcement = compile_policy(rs)
    if args.json:
        print(json.dumps({**policy.to_dict(), "enforcement": enforcement_dict(enforcement)}, indent=2,
                         sort_keys=True))
        return 0
    print(f"rule set {rs.version[:12]}: {len(rs.enabled_rules)} enabled rules")
    drop = [t for t, tp in policy.types.items() if tp.mode == "drop"]
    for t, tp in policy.types.items():
        if tp.mode == "drop":
            continue
        print(f"\n{t}: {tp.mode.upper()}  rules: {', '.join(tp.rules)}")
        if tp.mode == "pass":
            print(f"  the kernel passes every {t} event: not filterable in the kernel: {', '.join(tp.reasons)}")
            for rid in tp.reasons:
                print(f"    {rid}: {describe(rs.by_id[rid].specialized[t])}")
            continue
        print(f"  the kernel passes a {t} event only if one of these holds:")
        for label, table in (("path", tp.paths), ("inode", tp.inodes), ("name", tp.names), ("prefix", tp.prefixes)):
            for slot, entries in table.items():
                if entries:
                    print(f"    {slot} {label}: {_fmt_table(entries)}")
        if tp.exes:
            print(f"    process exe: {_fmt_table(tp.exes)}")
        if tp.exe_inodes:
            print(f"    process exe inode: {_fmt_table(tp.exe_inodes)}")
        if tp.flags:
            print(f"    flags & {tp.flags:#o}")
        if tp.mode_bits:
            print(f"    mode argument & {tp.mode_bits:#o}")
        if tp.attrs:
            print(f"    (tested by the collector before publishing) {' or '.join(tp.attrs)}")
        for rid in tp.rules:
            a = tree_approvers(rs.by_id[rid].specialized[t])
            print(f"  - {rid}: {len(a)} approver(s)" if a else f"  - {rid}: never matches {t}")
    print(f"\ndropped in the kernel (no rule needs them): {', '.join(drop) or 'none'}")
    if policy.unresolved:
        from fimstream.schemas.codec import text
        print(f"exact paths not present now (approved by path only): {', '.join(map(text, policy.unresolved))}")
    if rs.correlations:
        print("\ncorrelations (run by the detector on rule matches; their step rules are filtered above):")
        for c in rs.correlations:
            print("  " + describe_correlation(c, rs))
    print_enforcement(enforcement)
    for w in rs.warnings:
        print(f"warning: {w}")
    return 0


def enforcement_dict(enf) -> dict:
    from .enforcement import DENY_TYPES, KILL_TYPES, describe_clause
    out = {"kill": {}, "deny": {}, "refused": [str(r) for r in enf.refused]}
    for action, tables in (("kill", enf.kill), ("deny", enf.deny)):
        for t, table in tables.items():
            hook = KILL_TYPES[t] if action == "kill" else (DENY_TYPES[t], "")
            out[action][t] = {"hook": hook[0], "effect": hook[1] if action == "kill" else DENY_TYPES[t],
                              "clauses": [{"rule": c.rule, "when": describe_clause(table, c)} for c in table.clauses]}
    return out


def print_enforcement(enf) -> None:
    """What `actions: [kill]` / `[deny]` do on this kernel, rule by rule (fimstream.rules.enforcement)."""
    from .enforcement import DENY_TYPES, KILL_TYPES, describe_clause
    if enf.empty and not enf.refused:
        return
    print("\nenforcement:")
    for t, table in enf.kill.items():
        hook, effect = KILL_TYPES[t]
        print(f"  kill on {t}: SIGKILL from the kernel at {hook}")
        print(f"    effect on this kernel: {effect}")
        for c in table.clauses:
            print(f"    - {c.rule}: when {describe_clause(table, c)}")
    for t, table in enf.deny.items():
        print(f"  deny on {t}: {DENY_TYPES[t]}")
        for c in table.clauses:
            print(f"    - {c.rule}: when {describe_clause(table, c)}")
    if any(t in enf.kill for t in ("truncate", "unlink", "rmdir", "rename", "chmod", "chown")):
        print("  note: path strings of unlink/rmdir/rename/chmod/chown/truncate are matched as written, joined to "
              "the true dirfd/cwd path at syscall entry: a symlink or '..' inside the string is not resolved")
    for r in enf.refused:
        print(f"  refused: {r}")


def describe_correlation(c, rs) -> str:
    """One line: what a correlation waits for, with its `same` fields resolved per step type."""
    from .correlations import format_duration, resolve_same
    window = format_duration(c.window_ns)
    if c.kind == "sequence":
        steps = " then ".join(s if isinstance(s, str) else "(" + " or ".join(s) + ")" for s in c.steps)
        what = f"{steps}"
        if c.same_fields:
            types = [(i, r, rs.by_id[r].event_types) for i, st in enumerate(c.step_sets, 1) for r in sorted(st)]
            joins = []
            for name in c.same_fields:
                resolved, _ = resolve_same(name, types)
                names = sorted({f.name for f in (resolved or {}).values()})
                joins.append(f"{name} ({', '.join(names)})")
            what += f", same {'; '.join(joins)}"
    elif c.kind == "threshold":
        what = f"{c.count} matches of {' or '.join(c.steps)}"
    else:
        what = f"rule scores adding up to {c.min_score:g}"
    off = "" if c.enabled else " [disabled]"
    return f"{c.id}: {what} within {window} per {c.by}{off}"


def cmd_docs(args) -> int:
    from .docs import render_fields_md
    md = render_fields_md()
    if args.output:
        Path(args.output).write_text(md, encoding="utf-8")
    else:
        sys.stdout.write(md)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fimstream")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
