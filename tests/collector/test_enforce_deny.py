"""`actions: [deny]` through fanotify permission events: real victims get EPERM; a slow decision times out
to the configured answer; BPF-LSM is probed and the fallback is reported.

Each test mounts its own tmpfs and puts the denied paths there, so the filesystem marks a prefix rule
needs never cover the machine's root filesystem (which other processes share).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

from fimstream.collector.enforce_fanotify import FanotifyDeny
from fimstream.collector.enforce_lsm import probe_bpf_lsm
from fimstream.rules import load_rules_text
from fimstream.rules.enforcement import EnforcementPolicy, compile_policy

from .conftest import root_only

pytestmark = root_only


@pytest.fixture
def mnt(tmp_path):
    d = tmp_path / "mnt"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "fimstream-test", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def deny():
    backends = []

    def make(text: str, **kw) -> FanotifyDeny:
        policy = compile_policy(load_rules_text(text))
        assert policy.refused == [], policy.refused
        events = []
        d = FanotifyDeny(emit=events.append, **kw)
        d.events = events
        d.apply(policy)
        backends.append(d)
        return d
    yield make
    for d in backends:
        d.close()


def rule(rule_id: str, expression: str) -> str:
    return f"rules:\n  - id: {rule_id}\n    expression: '{expression}'\n    actions: [deny]\n"


def victim(code: str, *args) -> tuple[subprocess.Popen, bytes, bytes]:
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=30)
    return p, out, err


READ = ("import sys\ntry:\n    print(open(sys.argv[1]).read(), end='')\n"
        "except OSError as e:\n    print('errno', e.errno)")


def test_deny_on_open_fails_with_eperm_and_nothing_is_read(deny, mnt):
    (mnt / "secret").mkdir()
    (mnt / "secret" / "key").write_text("s3cret")
    (mnt / "public").write_text("hello")
    d = deny(rule("no_secrets", f'open.file.path =~ "{mnt}/secret/**"'))

    p, out, _ = victim(READ, mnt / "secret" / "key")
    assert out == b"errno 1\n"  # EPERM: the open failed, nothing was read
    _, out, _ = victim(READ, mnt / "public")
    assert out == b"hello"  # same filesystem, not a denied path
    assert d.stats.denied == 1 and d.stats.allowed >= 1
    [ev] = [e for e in d.events if e["attrs"]["outcome"] == "denied"]
    assert ev["event_type"] == "enforcement" and ev["file"]["path"] == os.fsencode(mnt / "secret" / "key")
    assert ev["retval"] == -errno.EPERM and ev["process"]["pid"] == p.pid
    assert ev["process"]["exe"] == os.fsencode(os.path.realpath(sys.executable))
    a = ev["attrs"]
    assert (a["action"], a["rule_id"], a["event_type"], a["backend"], a["pid"], a["effect"]) == (
        "deny", "no_secrets", "open", "fanotify", str(p.pid), "prevented: EPERM")


def test_deny_write_opens_only_and_o_trunc_does_not_truncate(deny, mnt):
    conf = mnt / "app.conf"
    conf.write_text("original\n")
    d = deny(rule("ro_conf", f'open.file.path == "{conf}" && open.flags & (O_WRONLY | O_RDWR) != 0'))
    _, out, _ = victim(READ, conf)
    assert out == b"original\n"
    _, out, _ = victim("import sys\ntry:\n    open(sys.argv[1], 'w').write('EVIL')\nexcept OSError as e:\n"
                       "    print('errno', e.errno)", conf)
    assert out == b"errno 1\n"
    time.sleep(0.05)
    d.close()  # read it back without a mark in the way
    assert conf.read_text() == "original\n"  # the O_TRUNC of 'w' never happened
    [ev] = d.events
    assert ev["attrs"]["flags"] == oct(os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)


def test_exact_path_is_denied_through_a_hard_link_and_after_being_replaced(deny, mnt):
    target = mnt / "target"
    target.write_text("v1")
    d = deny(rule("exact", f'open.file.path == "{target}"'))
    os.link(target, mnt / "alias")
    _, out, _ = victim(READ, mnt / "alias")
    assert out == b"v1"  # another name of the inode: the path is not the denied one
    assert d.stats.events >= 1  # ... but the inode mark made the kernel ask
    tmp = mnt / "new"
    tmp.write_text("v2")
    os.rename(tmp, target)  # a new inode at the denied path: the directory mark covers it
    _, out, _ = victim(READ, target)
    assert out == b"errno 1\n"


def test_deny_on_exec_fails_with_eperm(deny, mnt):
    bindir = mnt / "bin"
    bindir.mkdir()
    shell = os.path.realpath("/bin/sh")
    for name in ("tool", "other"):
        shutil.copy(shell, bindir / name)
    d = deny(rule("no_tool", f'exec.file.path == "{bindir}/tool"') +
             f"  - id: no_reading_bin\n    expression: 'open.file.path =~ \"{bindir}/**\"'\n    actions: [deny]\n")
    with pytest.raises(PermissionError) as e:
        subprocess.run([str(bindir / "tool"), "-c", "exit 0"], timeout=30)
    assert e.value.errno == errno.EPERM
    # the open execve makes of a binary is part of the exec, not an open: the open rule does not stop it
    assert subprocess.run([str(bindir / "other"), "-c", "exit 7"], timeout=30).returncode == 7
    _, out, _ = victim(READ, bindir / "other")
    assert out == b"errno 1\n"  # an open(2) of the same file is
    outcomes = [(e["attrs"]["rule_id"], e["attrs"]["event_type"]) for e in d.events]
    assert outcomes == [("no_tool", "exec"), ("no_reading_bin", "open")]


def test_own_opens_are_answered_at_once(deny, mnt):
    (mnt / "secret").mkdir()
    (mnt / "secret" / "key").write_text("mine")
    d = deny(rule("no_secrets", f'open.file.path =~ "{mnt}/secret/**"'))
    t0 = time.monotonic()
    assert (mnt / "secret" / "key").read_text() == "mine"  # the collector never blocks on itself
    assert time.monotonic() - t0 < 1 and d.stats.self_allowed >= 1 and d.stats.denied == 0


def test_a_slow_decision_times_out_to_allow_and_is_counted(deny, mnt):
    (mnt / "secret").mkdir()
    (mnt / "secret" / "key").write_text("s3cret")
    d = deny(rule("no_secrets", f'open.file.path =~ "{mnt}/secret/**"'), timeout_ms=100,
             decide_hook=lambda req: time.sleep(0.6))
    t0 = time.monotonic()
    _, out, _ = victim(READ, mnt / "secret" / "key")
    took = time.monotonic() - t0
    assert out == b"s3cret"  # fail open: the slow decider did not hang the victim past the timeout
    assert d.stats.timeouts >= 1 and took < 5
    deadline = time.monotonic() + 5
    while not d.stats.late and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.stats.late >= 1
    late = [e for e in d.events if e["attrs"]["outcome"] == "timeout_allowed"]
    assert late and late[0]["attrs"]["rule_id"] == "no_secrets"  # the miss is reported, not silent


def test_fail_closed_timeout_denies(deny, mnt):
    (mnt / "f").write_text("x")
    d = deny(rule("slow", f'open.file.path == "{mnt}/f"'), timeout_ms=100, on_timeout="deny",
             decide_hook=lambda req: time.sleep(0.5))
    _, out, _ = victim(READ, mnt / "f")
    assert out == b"errno 1\n" and d.stats.timeouts >= 1


def test_an_empty_policy_removes_the_marks(deny, mnt):
    (mnt / "secret").mkdir()
    (mnt / "secret" / "key").write_text("s3cret")
    d = deny(rule("no_secrets", f'open.file.path =~ "{mnt}/secret/**"'))
    d.apply(EnforcementPolicy("none"))
    seen = d.stats.events
    _, out, _ = victim(READ, mnt / "secret" / "key")
    assert out == b"s3cret" and d.stats.events == seen  # the kernel no longer asks


def test_bpf_lsm_is_probed_and_refused_here():
    probe = probe_bpf_lsm()
    # this kernel has CONFIG_BPF_LSM=y and still refuses BPF_PROG_TYPE_LSM loads (DESIGN.md)
    assert (probe.available, probe.reason) == (False, "EPERM"), probe
    assert str(probe) == "unavailable: EPERM"
