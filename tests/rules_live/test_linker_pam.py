"""linker_pam.yaml: dynamic linker preload/configuration and PAM, live.

/etc/ld.so.preload is never created on the host (every program on the machine would read it): those
tests run in a private mount namespace with an overlay over /etc."""
from __future__ import annotations

import os

import pytest

from .harness import (TRUE, Namespace, assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove,
                      run, unique)

PRELOAD = "/etc/ld.so.preload"


def create(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)


def preload_created():
    create(PRELOAD, b"/tmp/libhook.so\n")


def preload_opened_for_write():
    os.close(os.open(PRELOAD, os.O_WRONLY | os.O_APPEND))


def preload_symlinked():
    os.symlink("/tmp/preload-list", PRELOAD)


@fires("ld_preload_modified")
@pytest.mark.parametrize("how", [preload_created, preload_opened_for_write, preload_symlinked],
                         ids=["create", "open_for_write", "symlink"])
def test_preload_modified(live, scratch, how):
    existing = {"ld.so.preload": b""} if how is preload_opened_for_write else {}
    out = live.trigger(in_child(how, ns=Namespace(scratch, overlay=("/etc",), upper={"/etc": existing})))
    assert_fires(out, "ld_preload_modified", PRELOAD)


@quiet("ld_preload_modified")
def test_dynamic_loader_reading_preload_is_quiet(live, scratch):
    # every dynamic program's loader opens an existing /etc/ld.so.preload read-only
    ns = Namespace(scratch, overlay=("/etc",), upper={"/etc": {"ld.so.preload": b""}})
    out = live.trigger(run(TRUE, ns=ns))
    assert out.result[1] == 0
    assert_quiet(out, "ld_preload_modified")


@fires("ld_so_conf_modified")
def test_ld_so_conf_drop_in_created(live):
    path = f"/etc/ld.so.conf.d/{unique()}"  # no .conf suffix: ldconfig would not include it
    try:
        out = live.trigger(in_child(lambda: create(path)))
    finally:
        remove(path)
    assert_fires(out, "ld_so_conf_modified", path)


@quiet("ld_so_conf_modified")
def test_ld_so_conf_read_is_quiet(live):
    def read():
        with open("/etc/ld.so.conf", "rb") as f:  # what ldconfig does
            f.read()
    out = live.trigger(in_child(read))
    assert_quiet(out, "ld_so_conf_modified")


@fires("pam_config_modified")
def test_pam_service_file_created(live):
    path = f"/etc/pam.d/{unique()}"  # PAM reads a service file only for a service of that name
    try:
        out = live.trigger(in_child(lambda: create(path, b"auth sufficient pam_permit.so\n")))
    finally:
        remove(path)
    assert_fires(out, "pam_config_modified", path)


@quiet("pam_config_modified")
def test_pam_auth_update_is_quiet(live, tools):
    tool = copy_tool("/usr/bin/touch", tools, "pam-auth-update")
    path = f"/etc/pam.d/{unique()}"
    try:
        out = live.trigger(run(tool, path))
    finally:
        remove(path)
    assert out.result[1] == 0
    assert_quiet(out, "pam_config_modified")
