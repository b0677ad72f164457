"""system_dirs.yaml: /etc, binary and library directories, live (uniquely named files, removed at once)."""
from __future__ import annotations

import os
import sys

import pytest

from .harness import assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove, run, unique


def create(path):
    with open(path, "wb") as f:
        f.write(b"x")


def _create(p):
    create(p)


def _mkdir(p):
    os.mkdir(p)


def _symlink(p):
    os.symlink("/etc/hostname", p)


def _renamed_in(p):
    tmp = f"/var/lib/{unique()}"
    create(tmp)
    os.rename(tmp, p)  # same filesystem here; the rename's destination is what the rule sees


def _chown(p):
    create(p)
    os.chown(p, 65534, -1)


def _removed(p):
    create(p)
    os.unlink(p)


@fires("etc_write")
@pytest.mark.parametrize("how", [_create, _mkdir, _symlink, _renamed_in, _chown, _removed],
                         ids=["create", "mkdir", "symlink", "rename", "chown", "unlink"])
def test_etc_changed(live, how):
    path = f"/etc/{unique()}"
    try:
        out = live.trigger(in_child(lambda: how(path)))
    finally:
        remove(path)
    assert_fires(out, "etc_write", path)


@quiet("etc_write")
def test_etc_read_is_quiet(live):
    out = live.trigger(in_child(lambda: open("/etc/hostname", "rb").read()))
    assert_quiet(out, "etc_write")


@fires("bin_dir_modified")
def test_program_dropped_into_usr_local_bin(live):
    path = f"/usr/local/bin/{unique()}"  # not executable: nothing can run it
    try:
        out = live.trigger(in_child(lambda: create(path)))
    finally:
        remove(path)
    assert_fires(out, "bin_dir_modified", path)


@quiet("bin_dir_modified")
def test_package_manager_installing_a_program_is_quiet(live, tools):
    dpkg = copy_tool("/usr/bin/touch", tools, "dpkg")
    path = f"/usr/local/bin/{unique()}"
    try:
        out = live.trigger(run(dpkg, path))
    finally:
        remove(path)
    assert out.result[1] == 0
    assert_quiet(out, "bin_dir_modified")


@fires("lib_dir_modified")
def test_library_dropped_into_usr_local_lib(live):
    path = f"/usr/local/lib/{unique()}.so"
    try:
        out = live.trigger(in_child(lambda: create(path)))
    finally:
        remove(path)
    assert_fires(out, "lib_dir_modified", path)


@quiet("lib_dir_modified")
def test_python_byte_compiling_a_library_is_quiet(live):
    d = f"/usr/local/lib/{unique()}"
    os.mkdir(d)
    try:
        with open(f"{d}/mod.py", "w") as f:
            f.write("X = 1\n")
        out = live.trigger(run(sys.executable, "-c", f"import py_compile; py_compile.compile({d + '/mod.py'!r}, doraise=True)",
                               env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}))
        assert out.result[1] == 0 and os.listdir(f"{d}/__pycache__"), out.describe()
    finally:
        remove(d)
    assert_quiet(out, "lib_dir_modified")
