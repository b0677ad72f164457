"""Real actions the default pack means to catch but cannot, because the collector does not report what the
rules would need. Strict xfails: each names what the collector must add, and fails (XPASS) once it does, so
the rule can be extended and the test turned into a regular live test."""
from __future__ import annotations

import ctypes
import os

import pytest

from .harness import assert_fires, in_child, libc, remove, unique

SYS_FINIT_MODULE = 313  # x86_64


@pytest.fixture
def dropped_script():
    d = f"/tmp/{unique()}"
    os.mkdir(d)
    with open(f"{d}/run.sh", "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(f"{d}/run.sh", 0o755)
    yield d
    remove(d)


@pytest.mark.xfail(strict=True, reason=(
    "an exec event's file is mm->exe_file, i.e. the interpreter (/usr/bin/dash) for a script; the script "
    "execve() was given appears only as attrs.filename, the caller's unresolved string ('./run.sh'), "
    "without identity or inode times. The collector must report the executed script (path resolved from "
    "bprm->filename and the caller's cwd/dirfd, like a failed exec's, plus its inode times and upper-layer "
    "flag) so exec_from_tmp, exec_from_dev_shm, dropper_executed, container_drift can test it"))
def test_script_dropped_in_tmp_and_run(live, dropped_script):
    def go():
        os.chdir(dropped_script)
        os.execv("./run.sh", ["./run.sh"])
    out = live.trigger(in_child(go, detach=True))
    assert any(e["event_type"] == "exec" for e in out.events), out.describe()
    assert_fires(out, "exec_from_tmp", f"{dropped_script}/run.sh")


@pytest.mark.xfail(strict=True, reason=(
    "no init_module/finit_module hook: a program that loads a module itself (no modprobe/insmod exec) makes "
    "no event; kernel_module_loaded only sees loader execs. The collector must report init_module and "
    "finit_module (the module file from the fd, the caller, the result; delete_module too)"))
def test_module_loaded_by_finit_module(live, tmp_path):
    bogus = tmp_path / "rootkit.ko"
    bogus.write_bytes(b"not a module")  # refused by the kernel (ENOEXEC): nothing is ever loaded

    def load():
        fd = os.open(bogus, os.O_RDONLY)
        assert libc.syscall(ctypes.c_long(SYS_FINIT_MODULE), fd, b"", 0) == -1
    out = live.trigger(in_child(load))
    assert_fires(out, "kernel_module_loaded")
