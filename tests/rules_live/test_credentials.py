"""credentials.yaml: password databases, sudoers, SSH keys and configuration, live.

Real credential files are only ever opened read-only, or opened for writing without writing anything
(O_WRONLY|O_APPEND, then close). Anything that creates, renames or links one happens in a private mount
namespace with an overlay over the real /etc: the changes live in a tmpfs upper layer and vanish with it.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from .harness import (Namespace, assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove, run,
                      unique)


def write_open(path):
    """Opened for writing, nothing written."""
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def read(path):
    with open(path, "rb") as f:
        f.read(1)


def create(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)


@fires("cred_shadow_read")
def test_shadow_read(live):
    out = live.trigger(in_child(lambda: read("/etc/shadow")))
    assert_fires(out, "cred_shadow_read", "/etc/shadow")


@fires("cred_shadow_read")
def test_shadow_read_through_io_uring(live, uring_ops):
    out = live.trigger(run(uring_ops, "openat,/etc/shadow,0", "read,$0"))  # no open(2) at all
    hits = assert_fires(out, "cred_shadow_read", "/etc/shadow")
    assert hits[0]["event"]["syscall"] == "io_uring:openat"


@quiet("cred_shadow_read")
def test_chage_reading_shadow_is_quiet(live):
    out = live.trigger(run("/usr/bin/chage", "-l", "root"))
    assert out.result[1] == 0
    assert_quiet(out, "cred_shadow_read")


@fires("cred_account_db_modified")
def test_passwd_opened_for_writing(live):
    out = live.trigger(in_child(lambda: write_open("/etc/passwd")))
    assert_fires(out, "cred_account_db_modified", "/etc/passwd")


@fires("cred_account_db_modified")
def test_passwd_opened_for_writing_through_io_uring(live, uring_ops):
    out = live.trigger(run(uring_ops, f"openat,/etc/passwd,{os.O_WRONLY | os.O_APPEND}"))
    hits = assert_fires(out, "cred_account_db_modified", "/etc/passwd")
    assert hits[0]["event"]["syscall"] == "io_uring:openat"


@fires("cred_account_db_modified")
def test_group_replaced_by_rename(live, scratch):
    def replace():
        create("/etc/group.new", open("/etc/group", "rb").read() + b"backdoor:x:0:\n")
        os.rename("/etc/group.new", "/etc/group")
    out = live.trigger(in_child(replace, ns=Namespace(scratch, overlay=("/etc",))))
    assert_fires(out, "cred_account_db_modified", "/etc/group")


@quiet("cred_account_db_modified")
def test_passwd_read_is_quiet(live):
    out = live.trigger(in_child(lambda: read("/etc/passwd")))  # every getpwnam() does this
    assert_quiet(out, "cred_account_db_modified")


@quiet("cred_account_db_modified")
def test_account_tool_writing_passwd_is_quiet(live, scratch, tools):
    useradd = copy_tool("/usr/bin/touch", tools, "useradd")
    out = live.trigger(run(useradd, "/etc/passwd", ns=Namespace(scratch, overlay=("/etc",))))
    assert out.result[1] == 0
    assert_quiet(out, "cred_account_db_modified")


@fires("sudoers_modified")
def test_sudoers_drop_in_created(live, scratch):
    name = f"/etc/sudoers.d/{unique()}"

    def drop_in():
        os.makedirs("/etc/sudoers.d", exist_ok=True)
        create(name, b"ALL ALL=(ALL) NOPASSWD: ALL\n")
    out = live.trigger(in_child(drop_in, ns=Namespace(scratch, overlay=("/etc",))))
    assert_fires(out, "sudoers_modified", name)


@fires("sudoers_modified")
def test_sudoers_opened_for_writing(live, scratch):
    ns = Namespace(scratch, overlay=("/etc",), upper={"/etc": {"sudoers": b"root ALL=(ALL) ALL\n"}})
    out = live.trigger(in_child(lambda: write_open("/etc/sudoers"), ns=ns))
    assert_fires(out, "sudoers_modified", "/etc/sudoers")


@quiet("sudoers_modified")
def test_visudo_editing_sudoers_is_quiet(live, scratch, tools):
    visudo = copy_tool("/usr/bin/touch", tools, "visudo")
    ns = Namespace(scratch, overlay=("/etc",), upper={"/etc": {"sudoers": b"root ALL=(ALL) ALL\n"}})
    out = live.trigger(run(visudo, "/etc/sudoers", ns=ns))
    assert out.result[1] == 0
    assert_quiet(out, "sudoers_modified")


@pytest.fixture
def home():
    """A home directory of nobody in particular: /home/<unique>/.ssh (removed after the test)."""
    d = f"/home/{unique()}"
    os.makedirs(f"{d}/.ssh", mode=0o700)
    yield d
    remove(d)


@fires("ssh_authorized_keys_modified")
def test_authorized_keys_created(live, home):
    keys = f"{home}/.ssh/authorized_keys"
    out = live.trigger(in_child(lambda: create(keys, b"ssh-ed25519 AAAAC3Nza... attacker\n")))
    assert_fires(out, "ssh_authorized_keys_modified", keys)


@fires("ssh_authorized_keys_modified")
def test_authorized_keys_appended(live, home):
    keys = f"{home}/.ssh/authorized_keys"
    create(keys, b"ssh-ed25519 AAAAC3Nza... owner\n")
    out = live.trigger(in_child(lambda: write_open(keys)))
    assert_fires(out, "ssh_authorized_keys_modified", keys)


@quiet("ssh_authorized_keys_modified")
def test_known_hosts_written_is_quiet(live, home):
    known = f"{home}/.ssh/known_hosts"
    out = live.trigger(in_child(lambda: create(known, b"host ssh-ed25519 AAAA...\n")))
    assert_quiet(out, "ssh_authorized_keys_modified")


@pytest.fixture
def user_key(home):
    key = f"{home}/.ssh/id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key


@fires("ssh_private_key_read")
def test_private_key_read(live, user_key):
    out = live.trigger(in_child(lambda: read(user_key)))
    assert_fires(out, "ssh_private_key_read", user_key)


@quiet("ssh_private_key_read")
def test_ssh_keygen_reading_the_key_is_quiet(live, user_key):
    out = live.trigger(run("/usr/bin/ssh-keygen", "-y", "-f", user_key))
    assert out.result[1] == 0
    assert_quiet(out, "ssh_private_key_read")


def host_keys(scratch):
    """/etc/ssh with a real host key, in a private namespace (this machine has no SSH server)."""
    key = f"{scratch}-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    with open(key, "rb") as f, open(key + ".pub", "rb") as g:
        files = {"ssh_host_ed25519_key": f.read(), "ssh_host_ed25519_key.pub": g.read()}
    return Namespace(scratch, overlay=("/etc/ssh",), upper={"/etc/ssh": files})


@fires("ssh_host_key_read")
def test_host_key_read(live, scratch):
    out = live.trigger(in_child(lambda: read("/etc/ssh/ssh_host_ed25519_key"), ns=host_keys(scratch)))
    assert_fires(out, "ssh_host_key_read", "/etc/ssh/ssh_host_ed25519_key")


@quiet("ssh_host_key_read")
def test_ssh_keygen_and_public_key_reads_are_quiet(live, scratch):
    def both():
        read("/etc/ssh/ssh_host_ed25519_key.pub")  # the public half: anyone may read it
        subprocess.run(["/usr/bin/ssh-keygen", "-l", "-f", "/etc/ssh/ssh_host_ed25519_key"], check=True,
                       stdout=subprocess.DEVNULL)
    out = live.trigger(in_child(both, ns=host_keys(scratch)))
    assert_quiet(out, "ssh_host_key_read")


@fires("sshd_config_modified")
@pytest.mark.parametrize("path", ["/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/fimstream-live"])
def test_sshd_config_written(live, scratch, path):
    def write():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        create(path, b"PermitRootLogin yes\n")
    out = live.trigger(in_child(write, ns=Namespace(scratch, overlay=("/etc/ssh",))))
    assert_fires(out, "sshd_config_modified", path)


@fires("sshd_config_modified")
def test_sshd_config_opened_for_writing(live, scratch):
    ns = Namespace(scratch, overlay=("/etc/ssh",), upper={"/etc/ssh": {"sshd_config": b"Port 22\n"}})
    out = live.trigger(in_child(lambda: write_open("/etc/ssh/sshd_config"), ns=ns))
    assert_fires(out, "sshd_config_modified", "/etc/ssh/sshd_config")


@quiet("sshd_config_modified")
def test_ssh_client_config_written_is_quiet(live, scratch):
    path = "/etc/ssh/ssh_config.d/fimstream-live.conf"  # the client's configuration, not the server's
    out = live.trigger(in_child(lambda: create(path, b"ServerAliveInterval 30\n"),
                                ns=Namespace(scratch, overlay=("/etc/ssh",))))
    assert_quiet(out, "sshd_config_modified")
