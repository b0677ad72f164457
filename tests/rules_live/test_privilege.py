"""privilege.yaml: set-user-ID bits, modes and owners of sensitive files, uid/gid/capability changes, live.

Credential changes happen in forked children, which exit afterwards. A child that drops to an unprivileged
uid but keeps 0 as its saved uid is exactly a set-user-ID root program after its first seteuid(): the
kernel lets it become root again, which is what these rules are about."""
from __future__ import annotations

import ctypes
import os
import shutil
import stat

import pytest

from .harness import (TRUE, Namespace, assert_fires, assert_quiet, copy_tool, fires, in_child, libc, quiet,
                      remove, unique)

USER, NOBODY = 1000, 65534


@pytest.fixture
def plain_file(tmp_path):
    path = str(tmp_path / "tool")
    shutil.copy(TRUE, path)
    return path


@fires("setuid_bit_set")
@pytest.mark.parametrize("mode", [0o4755, 0o2755], ids=["setuid", "setgid"])
def test_setuid_bit_set(live, plain_file, mode):
    out = live.trigger(in_child(lambda: os.chmod(plain_file, mode)))
    assert_fires(out, "setuid_bit_set", plain_file)


@fires("setuid_bit_set")
def test_setuid_bit_set_through_fd(live, plain_file):
    def go():
        fd = os.open(plain_file, os.O_RDONLY)
        os.fchmod(fd, 0o4755)
    out = live.trigger(in_child(go))
    assert_fires(out, "setuid_bit_set", plain_file)


@quiet("setuid_bit_set")
def test_plain_chmod_is_quiet(live, plain_file):
    out = live.trigger(in_child(lambda: os.chmod(plain_file, 0o755)))
    assert any(e["event_type"] == "chmod" for e in out.events) or live.kernel_policy, out.describe()
    assert_quiet(out, "setuid_bit_set")


def etc_overlay(scratch):
    return Namespace(scratch, overlay=("/etc",))


@fires("sensitive_file_perms_changed")
@pytest.mark.parametrize("change", ["chmod", "chown"])
def test_shadow_mode_or_owner_changed(live, scratch, change):
    def go():
        if change == "chmod":
            os.chmod("/etc/shadow", 0o644)
        else:
            os.chown("/etc/shadow", NOBODY, -1)
    out = live.trigger(in_child(go, ns=etc_overlay(scratch)))
    assert_fires(out, "sensitive_file_perms_changed", "/etc/shadow")


@quiet("sensitive_file_perms_changed")
def test_hostname_mode_changed_is_quiet(live, scratch):
    out = live.trigger(in_child(lambda: os.chmod("/etc/hostname", 0o600), ns=etc_overlay(scratch)))
    assert_quiet(out, "sensitive_file_perms_changed")


@pytest.fixture
def etc_file():
    path = f"/etc/{unique()}"
    with open(path, "w"):
        pass
    yield path
    remove(path)


@fires("system_file_world_writable")
def test_etc_file_made_world_writable(live, etc_file):
    out = live.trigger(in_child(lambda: os.chmod(etc_file, 0o666)))
    assert_fires(out, "system_file_world_writable", etc_file)


@quiet("system_file_world_writable")
def test_etc_file_made_group_writable_is_quiet(live, etc_file):
    out = live.trigger(in_child(lambda: os.chmod(etc_file, 0o664)))
    assert any(e["event_type"] == "chmod" for e in out.events), out.describe()
    assert_quiet(out, "system_file_world_writable")


def dropped_keeping_saved_root():
    """An unprivileged process (uid/euid 1000) whose saved uid is still 0."""
    os.setgroups([])
    os.setresgid(USER, USER, USER)
    os.setresuid(USER, USER, 0)


@fires("root_gained_without_setuid")
def test_unprivileged_process_becomes_root(live):
    def go():
        dropped_keeping_saved_root()
        os.seteuid(0)
    out = live.trigger(in_child(go))
    hits = assert_fires(out, "root_gained_without_setuid")
    assert hits[0]["event"]["syscall"] in ("setuid", "setreuid", "setresuid")


@quiet("root_gained_without_setuid")
def test_root_dropping_privileges_is_quiet(live):
    def go():
        os.setgroups([])
        os.setresgid(USER, USER, USER)
        os.setresuid(USER, USER, USER)  # a daemon dropping root for good
    out = live.trigger(in_child(go))
    assert any(e["event_type"] == "setuid" for e in out.events), out.describe()
    assert_quiet(out, "root_gained_without_setuid")


@fires("setuid_root_by_unexpected_binary")
def test_unprivileged_process_sets_its_real_uid_to_root(live):
    def go():
        dropped_keeping_saved_root()
        os.setresuid(0, 0, 0)
    out = live.trigger(in_child(go))
    assert_fires(out, "setuid_root_by_unexpected_binary")


@quiet("setuid_root_by_unexpected_binary")
def test_effective_uid_regained_only_is_quiet(live):
    def go():  # euid back to 0, the real uid stays the user's (what a set-user-ID helper does)
        dropped_keeping_saved_root()
        os.seteuid(0)
    out = live.trigger(in_child(go))
    assert any(e["event_type"] == "setuid" for e in out.events), out.describe()
    assert_quiet(out, "setuid_root_by_unexpected_binary")


def as_nobody(path, *args):
    def go():
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        os.execv(path, [path, *args])
    return in_child(go)


@fires("setuid_root_binary_not_known")
def test_planted_setuid_root_copy_run_by_a_user(live, tools):
    d = os.path.join(tools, unique("suid"))
    os.mkdir(d)
    os.chmod(d, 0o755)
    try:
        planted = copy_tool("/usr/bin/id", d, "id")
        os.chown(planted, 0, 0)
        os.chmod(planted, 0o4755)
        out = live.trigger(as_nobody(planted))
    finally:
        remove(d)
    assert out.result[1] == 0
    assert_fires(out, "setuid_root_binary_not_known", planted)


@quiet("setuid_root_binary_not_known")
def test_known_setuid_helper_run_by_a_user_is_quiet(live):
    mount = "/usr/bin/mount"
    assert os.stat(mount).st_mode & stat.S_ISUID
    out = live.trigger(as_nobody(mount, "--version"))
    assert out.result[1] == 0
    execs = [e for e in out.events if e["event_type"] == "exec"]
    assert execs and execs[0]["process"]["euid"] == 0 and execs[0]["process"]["uid"] == NOBODY, out.describe()
    assert_quiet(out, "setuid_root_binary_not_known")


def dropped_keeping_saved_root_group():
    os.setgroups([])
    os.setresgid(USER, USER, 0)
    os.setresuid(USER, USER, USER)


@fires("root_group_gained_without_setgid")
def test_unprivileged_process_becomes_group_root(live):
    def go():
        dropped_keeping_saved_root_group()
        os.setegid(0)
    out = live.trigger(in_child(go))
    assert_fires(out, "root_group_gained_without_setgid")


@quiet("root_group_gained_without_setgid")
def test_unprivileged_process_keeping_its_group_is_quiet(live):
    def go():
        dropped_keeping_saved_root_group()
        os.setegid(USER)
    out = live.trigger(in_child(go))
    assert any(e["event_type"] == "setgid" for e in out.events), out.describe()
    assert_quiet(out, "root_group_gained_without_setgid")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


CAP_CHOWN, CAP_SYS_ADMIN = 0, 21
PR_SET_KEEPCAPS = 8


def raise_effective(cap: int):
    """Drop to uid 1000 keeping the permitted capabilities (PR_SET_KEEPCAPS), then raise one in the
    effective set with capset(2)."""
    def go():
        assert libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0
        os.setgroups([])
        os.setresgid(USER, USER, USER)
        os.setresuid(USER, USER, USER)
        hdr, data = CapHeader(0x20080522, 0), (CapData * 2)()
        assert libc.capget(ctypes.byref(hdr), data) == 0
        data[cap // 32].effective |= 1 << (cap % 32)
        if libc.capset(ctypes.byref(hdr), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
    return in_child(go)


@fires("dangerous_capability_gained")
def test_unprivileged_process_raises_sys_admin(live):
    out = live.trigger(raise_effective(CAP_SYS_ADMIN))
    assert_fires(out, "dangerous_capability_gained")


@quiet("dangerous_capability_gained")
def test_unprivileged_process_raising_chown_is_quiet(live):
    out = live.trigger(raise_effective(CAP_CHOWN))
    assert any(e["event_type"] == "capset" for e in out.events), out.describe()
    assert_quiet(out, "dangerous_capability_gained")
