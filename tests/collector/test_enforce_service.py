"""Enforcement in the running collector stage: kill/deny rules read from the rules directory, victims
killed and denied, both enforcements as `enforcement` events on the raw topic (embedded broker), the
backends in the health info and in `fimstream status`, and a rule change taking effect while it runs."""
from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time

import pytest

from fimstream import status

from .conftest import root_only
from .test_enforce_deny import mnt  # noqa: F401 - fixture: a private tmpfs for the deny marks
from .test_service import _consume, _start

pytestmark = [root_only, pytest.mark.e2e]

WRITE = "import sys; f = open(sys.argv[1], 'r+'); f.write('EVIL'); f.flush(); print('written')"
READ = "import sys\ntry:\n    print(open(sys.argv[1]).read(), end='')\nexcept OSError as e:\n    print('errno', e.errno)"


def victim(code: str, *args) -> subprocess.CompletedProcess:
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    r = subprocess.CompletedProcess(p.args, p.returncode, out)
    r.pid = p.pid
    return r


def test_kill_and_deny_in_the_collector_stage(settings, tmp_path, mnt, capsys):  # noqa: F811
    protected = tmp_path / "protected"
    protected.mkdir()
    (protected / "conf").write_text("original\n")
    (mnt / "secret").write_text("s3cret")
    rules = tmp_path / "rules"
    rules.mkdir()
    rules_file = rules / "enforce.yaml"
    rules_file.write_text(f"""rules:
  - id: protect_conf
    expression: 'write.file.path =~ "{protected}/**"'
    actions: [kill]
  - id: no_secret
    expression: 'open.file.path == "{mnt}/secret"'
    actions: [deny]
  - id: not_enforceable
    expression: 'write.file.path =~ r"^{tmp_path}/.*[.]log$"'
    actions: [kill]
""")
    settings.rules = rules
    settings.state_dir.mkdir(parents=True, exist_ok=True)

    async def main():
        stop, health, task = await _start(settings)
        try:
            info = copy.deepcopy(health.snapshot()["info"])  # (the live dict changes on reload)
            killed = await asyncio.to_thread(victim, WRITE, protected / "conf")
            denied = await asyncio.to_thread(victim, READ, mnt / "secret")

            def done(recs):
                return len([r for r in recs if r["event_type"] == "enforcement"]) >= 2

            records, _ = await _consume(settings, done)
            health.write()
            # the rule file changes: the kill rule goes, the next writer lives
            rules_file.write_text(rules_file.read_text().replace("actions: [kill]\n  - id: no_secret",
                                                                 "actions: [alert]\n  - id: no_secret"))
            deadline = time.monotonic() + 20
            while health.snapshot()["info"]["enforcement"]["kill"] != "off" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            survivor = await asyncio.to_thread(victim, WRITE, protected / "conf")
            counters = health.snapshot()["counters"]
        finally:
            stop.set()
            await task
        return info, killed, denied, records, survivor, counters

    info, killed, denied, records, survivor, counters = asyncio.run(main())
    assert killed.returncode == -9 and denied.stdout == b"errno 1\n"
    assert info["enforcement_summary"] == "kill=bpf_send_signal deny=fanotify (bpf-lsm unavailable: EPERM)"
    enf = info["enforcement"]
    assert enf["kill_rules"] == {"protect_conf": ["write"]} and enf["deny_rules"] == {"no_secret": ["open"]}
    assert any("not_enforceable" in r and "regular expressions" in r for r in enf["refused"])
    assert enf["deny_marks"] == {"inodes": 1, "filesystems": 0} and enf["deny_on_timeout"] == "allow"

    by_action = {r["attrs"]["action"]: r for r in records if r["event_type"] == "enforcement"}
    kill, deny = by_action["kill"], by_action["deny"]
    assert kill["process"]["pid"] == killed.pid and kill["file"]["path"] == os.fsencode(protected / "conf")
    assert {k: kill["attrs"][k] for k in ("rule_id", "outcome", "event_type", "effect", "pid")} == {
        "rule_id": "protect_conf", "outcome": "killed", "event_type": "write", "effect": "prevented",
        "pid": str(killed.pid)}
    assert kill["process"]["exe"] == os.fsencode(os.path.realpath(sys.executable))
    assert deny["process"]["pid"] == denied.pid and deny["file"]["path"] == os.fsencode(mnt / "secret")
    assert {k: deny["attrs"][k] for k in ("rule_id", "outcome", "event_type", "backend")} == {
        "rule_id": "no_secret", "outcome": "denied", "event_type": "open", "backend": "fanotify"}
    assert deny["host"] == kill["host"] == settings.host
    assert counters["enforce_kill_kills"] >= 1 and counters["enforce_deny_denied"] == 1

    assert survivor.returncode == 0  # reloaded: the kill rule is alert-only now

    assert status.main(settings.state_dir) in (0, 1)
    out = capsys.readouterr().out
    assert "enforcement: kill=bpf_send_signal deny=fanotify (bpf-lsm unavailable: EPERM)" in out
