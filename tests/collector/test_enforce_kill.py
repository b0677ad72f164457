"""`actions: [kill]` decided in the kernel: real victims, real syscalls, the victim's observed outcome.

Each test loads a kill policy into the session collector's enforcement sensor and removes it afterwards.
What SIGKILL leaves done on this kernel is asserted, not assumed: a write is prevented (content
unchanged), an unlink is not (the name is gone, the process dies after it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fimstream.rules import load_rules_text
from fimstream.rules.enforcement import EnforcementPolicy, compile_policy

from .conftest import root_only

pytestmark = root_only


@pytest.fixture
def kill(collector):
    """kill(rules_yaml) -> the compiled policy, loaded into the kernel; events of this test in .events."""
    sensor = collector.enforce
    loaded = []

    def load(text: str):
        policy = compile_policy(load_rules_text(text))
        assert policy.refused == [], policy.refused
        failed = sensor.apply(policy)
        assert failed == {}, failed
        loaded.append(policy)
        collector.drain()
        return policy
    load.events = []
    collector.drain()  # earlier tests' records go to their own sinks, not this test's list
    collector.on_event = lambda ev: load.events.append(ev) if ev.type_name == "enforcement" else None
    yield load
    sensor.apply(EnforcementPolicy("none"))
    collector.on_event = lambda ev: None
    assert sensor.attached == []


def run(code: str, *args, **kw) -> subprocess.CompletedProcess:
    """Run a victim; the result carries its pid (to find its enforcement events)."""
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, **kw)
    out, err = p.communicate(timeout=30)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    r.pid = p.pid
    return r


def enforcement_events(collector, events, pid: int, settle: float = 0.05):
    time.sleep(settle)
    collector.drain()
    return [e for e in events if e.pid == pid]


def rule(rule_id: str, expression: str) -> str:
    return f"rules:\n  - id: {rule_id}\n    expression: '{expression}'\n    actions: [kill]\n"


WRITE = "import sys; f = open(sys.argv[1], 'r+'); f.write('EVIL'); f.flush(); print('written')"


def test_kill_on_write_under_a_protected_path(collector, kill, tmp_path):
    protected = tmp_path / "protected"
    (protected / "sub").mkdir(parents=True)
    target = protected / "sub" / "config"
    target.write_text("original\n")
    other = tmp_path / "other"
    other.write_text("original\n")
    kill(rule("protect", f'write.file.path =~ "{protected}/**"'))

    victim = subprocess.Popen([sys.executable, "-c", WRITE, str(target)], stdout=subprocess.PIPE)
    out, _ = victim.communicate(timeout=30)
    assert victim.returncode == -9 and out == b""  # died at the write: it never printed
    assert target.read_text() == "original\n"  # the write was prevented
    bystander = run(WRITE, other)
    assert bystander.returncode == 0 and other.read_text().startswith("EVIL")

    [ev] = enforcement_events(collector, kill.events, victim.pid)
    assert ev.syscall == "write" and ev.file.path == os.fsencode(target)
    assert ev.attrs == {"action": "kill", "rule_id": "protect", "outcome": "killed", "event_type": "write",
                        "syscall": "write", "path": str(target), "pid": str(victim.pid), "tid": str(victim.pid),
                        "effect": "prevented", "backend": "bpf_send_signal"}
    assert collector.enforce.counters()["kills"] >= 1


def test_kill_on_write_sees_through_a_symlink_and_a_relative_path(collector, kill, tmp_path):
    protected = tmp_path / "protected"
    protected.mkdir()
    target = protected / "f"
    target.write_text("original\n")
    (tmp_path / "alias").symlink_to(protected)
    kill(rule("protect", f'write.file.path =~ "{protected}/**"'))
    # write() has an fd: the kernel walks the true path, whatever name opened it
    r = run(WRITE, "alias/f", cwd=tmp_path)
    assert r.returncode == -9 and target.read_text() == "original\n"


def test_kill_does_not_prevent_unlink(collector, kill, tmp_path):
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("x")
    kill(rule("no_unlink", f'unlink.file.path == "{victim_file}"'))
    r = run("import os, sys; os.chdir(sys.argv[1]); os.unlink('./victim.txt'); print('after')", tmp_path)
    assert r.returncode == -9 and r.stdout == b""
    assert not victim_file.exists()  # documented: SIGKILL at sys_enter does not stop the unlink itself
    [ev] = enforcement_events(collector, kill.events, r.pid)
    assert ev.attrs["effect"] == "not_prevented" and ev.attrs["syscall"] == "unlink"
    assert ev.file.path == os.fsencode(victim_file)  # "./victim.txt" joined to the true cwd


def test_kill_on_shared_writable_mmap_only(collector, kill, tmp_path):
    target = tmp_path / "mapped"
    target.write_bytes(b"original")
    kill(rule("no_shared_map", f'mmap.file.path == "{target}" && mmap.protection & PROT_WRITE != 0 && '
                               'mmap.flags & MAP_SHARED != 0'))
    code = ("import mmap, sys; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0, flags=mmap.{}, "
            "prot=mmap.PROT_READ | mmap.PROT_WRITE); m[:4] = b'EVIL'; m.flush(); print('mapped')")
    private = run(code.format("MAP_PRIVATE"), target)
    assert private.returncode == 0 and private.stdout == b"mapped\n"
    shared = run(code.format("MAP_SHARED"), target)
    assert shared.returncode == -9 and shared.stdout == b""
    assert target.read_bytes() == b"original"


def test_kill_on_exec_before_the_new_image_runs(collector, kill, tmp_path):
    shell = os.path.realpath("/bin/sh")
    tool, other = tmp_path / "tool", tmp_path / "other"
    for copy in (tool, other):
        copy.write_bytes(open(shell, "rb").read())
        copy.chmod(0o755)
    kill(rule("no_tool", f'exec.file.path == "{tool}"'))
    script = "echo ran > \"$1\""
    r = subprocess.run([str(tool), "-c", script, "sh", str(tmp_path / "tool.ran")], timeout=30)
    assert r.returncode == -9 and not (tmp_path / "tool.ran").exists()  # not one instruction of it ran
    r = subprocess.run([str(other), "-c", script, "sh", str(tmp_path / "other.ran")], timeout=30)
    assert r.returncode == 0 and (tmp_path / "other.ran").exists()
    time.sleep(0.05)
    collector.drain()
    [ev] = [e for e in kill.events if e.attrs["rule_id"] == "no_tool"]
    assert ev.syscall == "sched_process_exec" and ev.file.path == os.fsencode(tool)
    assert ev.attrs["effect"] == "prevented" and ev.attrs["event_type"] == "exec"


def test_kill_on_open_stops_the_process_before_it_uses_the_fd(collector, kill, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    kill(rule("no_secret", f'open.file.path == "{secret}" && open.flags & (O_WRONLY | O_RDWR) == 0'))
    reader = run("import sys; print(open(sys.argv[1]).read())", secret)
    assert reader.returncode == -9 and reader.stdout == b""
    writer = run("import sys; open(sys.argv[1], 'a').write('+'); print('ok')", secret)
    # flags decide: write-opens pass (and this test must not read the file itself while the rule is loaded)
    assert writer.returncode == 0 and secret.stat().st_size == len("s3cret+")


@pytest.fixture
def world_dir():
    """A directory another uid can reach (pytest's tmp_path lives under a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="fimstream-enforce-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_exceptions_and_credentials_are_decided_in_the_kernel(collector, kill, world_dir):
    target = world_dir / "shared"
    target.write_text("original\n")
    target.chmod(0o666)
    kill(rule("protect", f'write.file.path == "{target}" && process.uid != 1000'))
    as_1000 = run("import os, sys; os.setgid(1000); os.setuid(1000); f = open(sys.argv[1], 'r+'); f.write('user')",
                  target)
    assert as_1000.returncode == 0 and target.read_text().startswith("user")
    as_root = run(WRITE, target)
    assert as_root.returncode == -9 and target.read_text().startswith("user")


def test_rename_destination_and_chmod_of_an_fd(collector, kill, tmp_path):
    cron = tmp_path / "cron.d"
    cron.mkdir()
    src = tmp_path / "job"
    src.write_text("* * * * * root evil\n")
    fmode = tmp_path / "fmode"
    fmode.write_text("")
    kill(f"""rules:
  - id: no_cron_drop
    expression: 'rename.file.destination.path =~ "{cron}/**"'
    actions: [kill]
  - id: no_chmod
    expression: 'chmod.file.path == "{fmode}" && chmod.file.destination.mode & S_ISUID != 0'
    actions: [kill]
""")
    r = run("import os, sys; os.rename(sys.argv[1], sys.argv[2]); print('moved')", src, cron / "job")
    assert r.returncode == -9 and (cron / "job").exists()  # the rename happened: not preventable here
    ok = run("import os, sys; os.fchmod(os.open(sys.argv[1], os.O_RDONLY), 0o644)", fmode)
    assert ok.returncode == 0
    bad = run("import os, sys; os.fchmod(os.open(sys.argv[1], os.O_RDONLY), 0o4755)", fmode)
    assert bad.returncode == -9 and fmode.stat().st_mode & 0o4000  # the mode changed, then it died
    time.sleep(0.05)
    collector.drain()
    by_rule = {e.attrs["rule_id"]: e for e in kill.events}
    assert set(by_rule) == {"no_cron_drop", "no_chmod"}
    assert by_rule["no_cron_drop"].target.path == os.fsencode(cron / "job")
    assert by_rule["no_cron_drop"].attrs["target"] == str(cron / "job")
    assert by_rule["no_chmod"].attrs["syscall"] == "fchmod" and by_rule["no_chmod"].mode == 0o4755


def test_pipeline_pids_are_never_killed(collector, kill, tmp_path):
    target = tmp_path / "f"
    target.write_text("original\n")
    kill(rule("protect", f'write.file.path == "{target}"'))
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                              "f = open(sys.argv[1], 'r+'); f.write('pipeline'); f.flush()", str(target)],
                             stdin=subprocess.PIPE)
    before = collector.program.ignored_pids()
    collector.set_ignored(before | {child.pid})
    try:
        child.communicate(b"go\n", timeout=30)
    finally:
        collector.set_ignored(before)
    assert child.returncode == 0 and target.read_text().startswith("pipeline")
