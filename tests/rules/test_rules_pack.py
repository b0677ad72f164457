"""The default rule pack (rules/), its fixtures, the CLI, and docs/fields.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fimstream.rules import load_rules, make_event
from fimstream.rules.cli import main
from fimstream.rules.docs import render_fields_md
from fimstream.rules.fixtures import fixture_files, run_fixtures

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "rules"


@pytest.fixture(scope="module")
def pack():
    return load_rules(PACK)


def test_pack_loads_cleanly_with_enough_rules(pack):
    assert len(pack.enabled_rules) >= 30
    assert not pack.warnings
    for r in pack.rules:
        assert r.description and r.tags and all(re.match(r"^T[0-9]{4}(\.[0-9]{3})?$", t) for t in r.tags), r.id


def test_every_rule_has_a_passing_trigger_and_look_alike(pack):
    report = run_fixtures(pack, fixture_files(PACK))
    assert not report.untested, report.untested
    assert not report.failures, "\n".join(map(str, report.failures))
    assert report.ok and len(report.cases) >= 2 * len(pack.enabled_rules)


def test_etc_write_matches_what_the_end_to_end_test_does(pack):
    for ev in ({"event_type": "create", "file": "/etc/fimstream-e2e-test"},
               {"event_type": "open", "file": "/etc/fimstream-e2e-test", "flags": "O_WRONLY|O_CREAT|O_TRUNC"},
               {"event_type": "write", "file": "/etc/fimstream-e2e-test"},
               {"event_type": "open", "file": "/etc/fimstream-e2e-test", "flags": "O_WRONLY|O_APPEND"}):
        ev["process"] = {"exe": "/usr/bin/python3.11", "comm": "python3"}
        assert "etc_write" in [r.id for r in pack.match(make_event(ev))], ev


def test_frequent_file_types_are_filtered_in_the_kernel(pack):
    policy = pack.kernel_policy(resolve_inodes=False)
    for t in ("open", "create", "write", "truncate", "unlink", "rename", "chmod", "chown", "link", "symlink", "mkdir"):
        assert policy.types[t].mode == "filter", (t, policy.types[t].reasons)
    # every open approver that is a broad prefix requires write-like flags
    for prefix, mask in policy.types["open"].prefixes["file"].items():
        assert mask or prefix.startswith((b"/etc/ssh/ssh_host_",)), prefix
    assert policy.types["fork"].mode == "drop"


def test_docs_fields_md_is_up_to_date():
    on_disk = (ROOT / "docs" / "fields.md").read_text(encoding="utf-8")
    assert on_disk == render_fields_md(), "docs/fields.md is stale: run `fimstream rules docs -o docs/fields.md`"


def test_cli_lint_test_explain_docs(capsys, tmp_path):
    assert main(["rules", "lint", str(PACK)]) == 0
    assert "ok: " in capsys.readouterr().out
    assert main(["rules", "test", str(PACK)]) == 0
    assert "0 rule(s) missing fixtures" in capsys.readouterr().out
    assert main(["rules", "explain", str(PACK), "--no-inodes"]) == 0
    out = capsys.readouterr().out
    assert "open: FILTER" in out and "exec: FILTER" in out and "exec.setuid" in out and "dropped in the kernel" in out
    assert main(["rules", "explain", str(PACK), "--json", "--no-inodes"]) == 0
    assert '"mode": "filter"' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    expression: open.file.path = \"/x\"\n")
    assert main(["rules", "lint", str(bad)]) == 1
    assert f"{bad}:3:32:" in capsys.readouterr().err
    assert main(["rules", "docs"]) == 0
    assert capsys.readouterr().out == render_fields_md()
