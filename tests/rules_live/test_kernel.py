"""kernel.yaml: kernel modules and device nodes, live.

No loadable module exists for this kernel and nothing here may load one, so module files are written into
a tmpfs over /usr/lib/modules in a private mount namespace (/lib is a link to usr/lib here), and module
loaders are laid out like kmod installs them (one binary, the tools are links to it)."""
from __future__ import annotations

import os
import stat

import pytest

from .harness import (TRUE, Namespace, assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove,
                      run, unique)

MODULES = "/usr/lib/modules"
RELEASE = os.uname().release


def in_module_tree(fn, scratch):
    def go():
        os.makedirs(f"{MODULES}/{RELEASE}/extra", exist_ok=True)
        fn(f"{MODULES}/{RELEASE}")
    return in_child(go, ns=Namespace(scratch, tmpfs=(MODULES,)))


def create(path, data=b"\x7fELF"):
    with open(path, "wb") as f:
        f.write(data)


def reopen_for_write(path):
    create(path)
    os.close(os.open(path, os.O_WRONLY))


def renamed_into_place(path):
    create(path + ".tmp")
    os.rename(path + ".tmp", path)


@fires("kernel_module_written")
@pytest.mark.parametrize("how", [create, reopen_for_write, renamed_into_place])
def test_module_written(live, scratch, how):
    out = live.trigger(in_module_tree(lambda tree: how(f"{tree}/extra/rootkit.ko"), scratch))
    assert_fires(out, "kernel_module_written", f"{MODULES}/{RELEASE}/extra/rootkit.ko")


@quiet("kernel_module_written")
def test_module_index_written_is_quiet(live, scratch):
    out = live.trigger(in_module_tree(lambda tree: create(f"{tree}/modules.dep", b""), scratch))  # what depmod writes
    assert_quiet(out, "kernel_module_written")


@pytest.fixture
def kmod(tools):
    """kmod's layout: /usr/bin/kmod, and modprobe, insmod, lsmod... as symbolic links to it (the exe the
    kernel reports is kmod whichever name was run)."""
    d = os.path.join(tools, unique("kmod"))
    os.mkdir(d)
    os.chmod(d, 0o755)
    copy_tool(TRUE, d, "kmod")
    for name in ("modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod"):
        os.symlink("kmod", os.path.join(d, name))
    yield d
    remove(d)


@fires("kernel_module_loaded")
@pytest.mark.parametrize("tool", ["modprobe", "insmod"])
def test_module_loader_run(live, kmod, tool):
    out = live.trigger(run(f"{kmod}/{tool}", "rootkit"))
    assert_fires(out, "kernel_module_loaded", f"{kmod}/kmod")


@fires("kernel_module_loaded")
def test_standalone_insmod_run(live, tools):
    insmod = copy_tool(TRUE, tools, "insmod")  # busybox-less, kmod-less systems ship real binaries
    out = live.trigger(run(insmod, "/tmp/rootkit.ko"))
    assert_fires(out, "kernel_module_loaded", insmod)


@quiet("kernel_module_loaded")
@pytest.mark.parametrize("tool", ["lsmod", "modinfo"])
def test_module_listing_is_quiet(live, kmod, tool):
    out = live.trigger(run(f"{kmod}/{tool}"))  # the same kmod binary, listing instead of loading
    assert any(e["event_type"] == "exec" for e in out.events), out.describe()
    assert_quiet(out, "kernel_module_loaded")


def dev_create(path):
    with open(path, "w"):
        pass


def dev_mkdir(path):
    os.mkdir(path)


def dev_symlink(path):
    os.symlink("/dev/null", path)


def dev_mknod(path):
    os.mknod(path, stat.S_IFIFO | 0o600)


@fires("dev_file_created")
@pytest.mark.parametrize("how", [dev_create, dev_mkdir, dev_symlink, dev_mknod])
def test_file_created_under_dev(live, how):
    path = f"/dev/{unique('.fimstream-live')}"
    try:
        out = live.trigger(in_child(lambda: how(path)))
    finally:
        remove(path)
    assert_fires(out, "dev_file_created", path)


@quiet("dev_file_created")
def test_shared_memory_segment_is_quiet(live):
    path = f"/dev/shm/{unique()}"  # what shm_open() creates
    try:
        out = live.trigger(in_child(lambda: dev_create(path)))
    finally:
        remove(path)
    assert_quiet(out, "dev_file_created")
