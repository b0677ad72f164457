"""Real actions the default pack means to catch but cannot, because the pipeline does not give the rules
what they would need. Strict xfails: each names what must be added (and where), and fails (XPASS) once it
is, so the test can become a regular live test."""
from __future__ import annotations

import ctypes
import os

import pytest

from .harness import MS_BIND, Namespace, assert_fires, in_child, libc, mount, remove, unique

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


@pytest.mark.xfail(strict=True, reason=(
    "the kernel passes an alias of a watched exact path (a bind mount or hard link of /etc/shadow: the "
    "policy's inode approvers, resolved at load), but Detection compares paths only, and the event's path "
    "is the alias's. Exact-path list items need the same (dev, ino) identity in the detector (resolved at "
    "load and on reload, like RuleSet.kernel_policy does) for cred_shadow_read and every exact-path rule"))
def test_shadow_read_through_a_bind_mount(live, tmp_path, scratch):
    alias = str(tmp_path / "alias")
    open(alias, "w").close()

    def go():
        Namespace(scratch).enter()
        mount("/etc/shadow", alias, None, MS_BIND)
        with open(alias, "rb") as f:
            f.read(1)
    out = live.trigger(in_child(go))
    st = os.stat("/etc/shadow")
    assert any(e["event_type"] == "open" and (e["file"]["dev"], e["file"]["ino"]) == (st.st_dev, st.st_ino)
               for e in out.events), f"the kernel did not pass the read\n{out.describe()}"
    assert_fires(out, "cred_shadow_read")
