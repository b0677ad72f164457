"""The process cache follows cgroup moves from the kernel's cgroup_attach_task records: a process that a
runtime moves into a container's cgroup and that then execs is reported in that cgroup, with that
container id, without /proc/PID/cgroup being read again. Real cgroups (the unified hierarchy and, on a
hybrid host, the v1 pids hierarchy), real processes."""
from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from fimstream.collector.enforce_scope import cgroup2_root

from .conftest import root_only

pytestmark = root_only
CONTAINER = "ab" * 32  # a 64-hex container id, as runtimes name their scopes
SCOPE = f"fimstream-test.slice/docker-{CONTAINER}.scope"


def _hierarchies() -> list[tuple[str, str]]:
    """(name, mount point) of the hierarchies to move a process in: the unified one, v1 pids if mounted."""
    out = []
    v2 = cgroup2_root()
    if v2:
        out.append(("unified", v2))
    if os.path.exists("/sys/fs/cgroup/pids/cgroup.procs"):
        out.append(("v1 pids", "/sys/fs/cgroup/pids"))
    return out


@pytest.fixture(params=_hierarchies(), ids=lambda h: h[0])
def scope(request):
    """A container-shaped cgroup directory in one hierarchy; removed afterwards."""
    name, root = request.param
    d = Path(root) / SCOPE
    d.mkdir(parents=True, exist_ok=True)
    yield name, d
    for p in (d, d.parent):
        try:
            p.rmdir()
        except OSError:
            pass


def test_exec_after_a_cgroup_move_is_in_the_new_cgroup_without_a_proc_read(collector, capture, scope, monkeypatch):
    name, d = scope
    procs = collector.procs
    read_for: list[int] = []
    real_read = procs._read_cgroup

    def counted(info):
        read_for.append(info.pid)
        return real_read(info)

    monkeypatch.setattr(procs, "_read_cgroup", counted)
    true = os.path.realpath("/bin/true")
    # the shell moves itself (as a runtime moves the container's first process), then becomes `true`
    events = capture(lambda: subprocess.run(["sh", "-c", f'echo $$ > "{d}/cgroup.procs" && exec {true}'], check=True),
                     children=True)
    execs = [e for e in events if e.type_name == "exec" and e.retval == 0 and e.file.path == os.fsencode(true)]
    assert len(execs) == 1, events
    info = procs.procs[execs[0].pid]
    assert info.cgroup == b"/" + SCOPE.encode(), (name, info.cgroup, info.cgroup_text)
    assert info.container_id == CONTAINER
    assert execs[0].pid not in read_for, "the cache should know the cgroups: the fork and the move were seen"
    assert procs.stats["cgroup_moves"] > 0


CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435


def _spawn_into_cgroup(cgroup_dir: Path, argv: list[str]) -> int:
    """clone3(CLONE_INTO_CGROUP) + exec: a child born in another cgroup, with no cgroup_attach_task."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = struct.pack("<11Q", CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, fd)
        buf = ctypes.create_string_buffer(args, len(args))
        libc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL across the call: the child may run Python
        libc.syscall.restype = ctypes.c_long
        pid = libc.syscall(ctypes.c_long(SYS_CLONE3), buf, ctypes.c_size_t(len(args)))
        if pid == 0:
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone3")
        return pid
    finally:
        os.close(fd)


def test_a_child_born_in_another_cgroup_is_reported_there(collector, capture):
    """clone3(CLONE_INTO_CGROUP) (systemd, crun) moves no task: the child's exec shows a v2 cgroup id its
    parent does not have, and the cache must not take the parent's cgroups for it."""
    v2 = cgroup2_root()
    if not v2:
        pytest.skip("no cgroup2 hierarchy mounted")
    d = Path(v2) / SCOPE
    d.mkdir(parents=True, exist_ok=True)
    true = os.path.realpath("/bin/true")
    try:
        def spawn():
            pid = _spawn_into_cgroup(d, [true])
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            return pid

        events = capture(spawn, children=True)
    finally:
        for p in (d, d.parent):
            try:
                p.rmdir()
            except OSError:
                pass
    execs = [e for e in events if e.type_name == "exec" and e.retval == 0 and e.pid == capture.result]
    assert len(execs) == 1, events
    info = collector.procs.procs[capture.result]
    assert info.cgroup == b"/" + SCOPE.encode(), info.cgroup_text
    assert info.container_id == CONTAINER
