"""anti_forensics.yaml: shell history and logs, live."""
from __future__ import annotations

import os

import pytest

from .harness import assert_fires, assert_quiet, copy_tool, fires, in_child, quiet, remove, run, unique


@pytest.fixture
def history(tmp_path):
    path = tmp_path / ".bash_history"
    path.write_text("ls\n")
    return str(path)


@fires("shell_history_deleted")
def test_history_deleted(live, history):
    out = live.trigger(lambda: os.unlink(history))
    assert_fires(out, "shell_history_deleted", history)


@quiet("shell_history_deleted")
def test_history_backup_deleted_is_quiet(live, tmp_path):
    backup = tmp_path / ".bash_history.bak"  # not a history file name
    backup.write_text("ls\n")
    out = live.trigger(lambda: os.unlink(backup))
    assert_quiet(out, "shell_history_deleted")


def _truncate_open(path):
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))


def _truncate_call(path):
    os.truncate(path, 0)


def _devnull_link(path):
    os.unlink(path)
    os.symlink("/dev/null", path)


@fires("shell_history_truncated")
@pytest.mark.parametrize("how", [_truncate_open, _truncate_call, _devnull_link], ids=["open_trunc", "truncate", "symlink_devnull"])
def test_history_truncated(live, history, how):
    out = live.trigger(in_child(lambda: how(history)))
    assert_fires(out, "shell_history_truncated", history)


@quiet("shell_history_truncated")
def test_shell_rewriting_its_history_is_quiet(live, history):
    # bash saving its history opens the file with O_TRUNC: the shell itself is expected to
    out = live.trigger(run("/bin/bash", "-c", f": > {history}"))
    assert any(e["event_type"] in ("open", "create") and e["file"]["path"] == history.encode()
               for e in out.events) or live.kernel_policy, out.describe()
    assert_quiet(out, "shell_history_truncated")


@pytest.fixture
def logdir():
    d = f"/var/log/{unique()}"
    os.mkdir(d)
    yield d
    remove(d)


def _logs(d, n):
    paths = [f"{d}/app.{i}.log" for i in range(n)]
    for p in paths:
        with open(p, "w") as f:
            f.write("x\n")
    return paths


@fires("log_deleted")
def test_log_deleted(live, logdir):
    (log,) = _logs(logdir, 1)
    out = live.trigger(in_child(lambda: os.unlink(log)))
    assert_fires(out, "log_deleted", log)


@fires("log_deleted")
@pytest.mark.parametrize("via", ["symlinked_dir", "dotdot"])
def test_log_deleted_through_an_indirect_path(live, logdir, tmp_path, via):
    # the unlink's path string does not start with /var/log: the kernel filter must not judge it lexically
    (log,) = _logs(logdir, 1)
    if via == "symlinked_dir":
        os.symlink(logdir, tmp_path / "logs")  # made just before: no start-up symlink scan knows it
        indirect = f"{tmp_path}/logs/{os.path.basename(log)}"
    else:
        indirect = f"/var/tmp/../log/{os.path.basename(logdir)}/{os.path.basename(log)}"
    out = live.trigger(in_child(lambda: os.unlink(indirect)))
    assert not os.path.exists(log)
    assert_fires(out, "log_deleted", log)


@fires("log_deleted")
def test_log_deleted_relative_to_its_directory(live, logdir):
    (log,) = _logs(logdir, 1)

    def go():
        os.chdir(logdir)
        os.unlink(os.path.basename(log))
    out = live.trigger(in_child(go))
    assert_fires(out, "log_deleted", log)


@fires("log_deleted")
def test_log_deleted_through_io_uring(live, logdir, uring_ops):
    (log,) = _logs(logdir, 1)
    out = live.trigger(run(uring_ops, f"unlinkat,{log}"))  # no unlink(2) at all
    assert not os.path.exists(log)
    hits = assert_fires(out, "log_deleted", log)
    assert hits[0]["event"]["syscall"].startswith("io_uring:")


@quiet("log_deleted")
@quiet("mass_log_deletion")
def test_log_rotation_deleting_many_logs_is_quiet(live, logdir, tools):
    logrotate = copy_tool("/bin/rm", tools, "logrotate")  # the rotation tool (the exception) removing old logs
    logs = _logs(logdir, 25)
    out = live.trigger(run(logrotate, "-f", *logs))
    assert not any(os.path.exists(p) for p in logs)
    assert_quiet(out, "log_deleted")
    assert_quiet(out, "mass_log_deletion")


@fires("mass_log_deletion")
def test_mass_log_deletion(live, logdir):
    logs = _logs(logdir, 20)
    out = live.trigger(in_child(lambda: [os.unlink(p) for p in logs]))
    assert len(out.of("log_deleted")) == 20, out.describe()
    hits = assert_fires(out, "mass_log_deletion")
    assert len(hits) == 1 and len(hits[0]["related_event_ids"]) == 19


@fires("log_truncated")
@pytest.mark.parametrize("how", [_truncate_open, _truncate_call], ids=["open_trunc", "truncate"])
def test_log_truncated(live, logdir, how):
    (log,) = _logs(logdir, 1)
    out = live.trigger(in_child(lambda: how(log)))
    assert_fires(out, "log_truncated", log)


@quiet("log_truncated")
def test_log_appended_is_quiet(live, logdir):
    (log,) = _logs(logdir, 1)

    def append():
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"more\n")
        os.close(fd)
    out = live.trigger(in_child(append))
    assert_quiet(out, "log_truncated")
