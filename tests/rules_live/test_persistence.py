"""persistence.yaml: cron, at, systemd units, rc scripts, shell start-up files, live.

New files get unique names that the daemons ignore or cannot act on (no unit suffix, no .sh, an empty cron
table) and are removed at once; existing start-up files are only opened for writing, never written."""
from __future__ import annotations

import os

import pytest

from .harness import (Namespace, assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove, run,
                      unique)


def create(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)


def write_open(path):
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def read(path):
    with open(path, "rb") as f:
        f.read()


def created_in(directory: str, how=create, **kw):
    """Trigger a new uniquely named file in a real directory; removed whatever happens."""
    def go(live):
        path = f"{directory}/{unique()}"
        try:
            return path, live.trigger(in_child(lambda: how(path), **kw))
        finally:
            remove(path)
    return go


@fires("cron_modified")
def test_cron_table_dropped(live):
    path, out = created_in("/etc/cron.d", lambda p: create(p, b"# empty\n"))(live)
    assert_fires(out, "cron_modified", path)


@fires("cron_modified")
def test_cron_table_staged_then_moved_into_place(live):
    staged = f"/tmp/{unique()}"
    path = f"/etc/cron.d/{unique()}"
    create(staged, b"# empty\n")
    try:
        out = live.trigger(in_child(lambda: os.rename(staged, path)))
    finally:
        remove(staged)
        remove(path)
    assert_fires(out, "cron_modified", path)


@fires("cron_modified")
def test_cron_table_made_executable(live):
    path = f"/etc/cron.d/{unique()}"
    create(path)
    try:
        out = live.trigger(in_child(lambda: os.chmod(path, 0o755)))
    finally:
        remove(path)
    assert_fires(out, "cron_modified", path)


@quiet("cron_modified")
def test_cron_reading_its_tables_is_quiet(live):
    out = live.trigger(in_child(lambda: read("/etc/cron.d/e2scrub_all") if os.path.exists("/etc/cron.d/e2scrub_all")
                                else os.listdir("/etc/cron.d")))
    assert_quiet(out, "cron_modified")


def spool(scratch, existing=None):
    """/var/spool in a private namespace (this machine has no at daemon and no spool)."""
    return Namespace(scratch, overlay=("/var/spool",), upper={"/var/spool": existing or {}})


@fires("at_job_created")
def test_at_job_queued(live, scratch):
    job = "/var/spool/cron/atjobs/a0000101a2b3c4"

    def queue():
        os.makedirs("/var/spool/cron/atjobs", exist_ok=True)
        create(job, b"#!/bin/sh\nid\n")
    out = live.trigger(in_child(queue, ns=spool(scratch)))
    assert_fires(out, "at_job_created", job)


@quiet("at_job_created")
def test_atd_reading_a_queued_job_is_quiet(live, scratch):
    job = "/var/spool/cron/atjobs/a0000101a2b3c4"
    out = live.trigger(in_child(lambda: read(job), ns=spool(scratch, {"cron/atjobs/a0000101a2b3c4": b"id\n"})))
    assert_quiet(out, "at_job_created")


@fires("systemd_unit_modified")
def test_systemd_unit_dropped(live):
    path, out = created_in("/etc/systemd/system")(live)
    assert_fires(out, "systemd_unit_modified", path)


@quiet("systemd_unit_modified")
def test_systemctl_masking_a_unit_is_quiet(live, tools):
    systemctl = copy_tool("/usr/bin/ln", tools, "systemctl")  # systemctl mask = a link to /dev/null
    path = f"/etc/systemd/system/{unique()}.service"
    try:
        out = live.trigger(run(systemctl, "-s", "/dev/null", path))
    finally:
        remove(path)
    assert out.result[1] == 0
    assert_quiet(out, "systemd_unit_modified")


@fires("rc_script_modified")
def test_rc_script_dropped(live):
    path, out = created_in("/etc/init.d", lambda p: create(p, b"#!/bin/sh\n"))(live)
    assert_fires(out, "rc_script_modified", path)


@quiet("rc_script_modified")
def test_update_rc_d_is_quiet(live, tools):
    tool = copy_tool("/usr/bin/touch", tools, "update-rc.d")
    path = f"/etc/init.d/{unique()}"
    try:
        out = live.trigger(run(tool, path))
    finally:
        remove(path)
    assert out.result[1] == 0
    assert_quiet(out, "rc_script_modified")


@fires("shell_startup_modified")
@pytest.mark.parametrize("path", ["/etc/profile", "/etc/bash.bashrc"])
def test_startup_file_opened_for_writing(live, path):
    out = live.trigger(in_child(lambda: write_open(path)))
    assert_fires(out, "shell_startup_modified", path)


@fires("shell_startup_modified")
def test_profile_opened_for_writing_through_a_symlink(live, tmp_path):
    link = tmp_path / "innocent"
    os.symlink("/etc/profile", link)  # the event's path is the file's true path, whatever name was used
    out = live.trigger(in_child(lambda: write_open(str(link))))
    assert_fires(out, "shell_startup_modified", "/etc/profile")


@fires("shell_startup_modified")
def test_profile_drop_in_created(live):
    path, out = created_in("/etc/profile.d")(live)  # profile.d sources *.sh only
    assert_fires(out, "shell_startup_modified", path)


@quiet("shell_startup_modified")
def test_login_shell_reading_its_profile_is_quiet(live):
    out = live.trigger(run("/bin/bash", "-l", "-c", "true"))
    assert out.result[1] == 0
    assert_quiet(out, "shell_startup_modified")
