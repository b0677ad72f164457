"""execution.yaml: programs run from staging places, memory, deleted files; containers; links to
credential files, live. Containers are what the pipeline knows of one: a process in a runtime-named cgroup
(docker-<id>.scope), in its own mount namespace with an overlay filesystem."""
from __future__ import annotations

import os
import shutil

import pytest

from .harness import (TRUE, Container, Namespace, assert_fires, assert_quiet, fires, in_child, quiet, remove,
                      run, unique)

IMAGE = open(TRUE, "rb").read()


@pytest.fixture
def staged():
    """A program just dropped into /tmp."""
    d = f"/tmp/{unique()}"
    os.mkdir(d)
    exe = f"{d}/payload"
    shutil.copy(TRUE, exe)
    yield exe
    remove(d)


@fires("dropper_executed")
@fires("exec_from_tmp")
def test_dropped_program_run_from_tmp(live, staged):
    # detached: the test runner's ancestry (make, tox) must not decide for the build-tool exception
    out = live.trigger(run(staged, detach=True))
    assert_fires(out, "dropper_executed", staged)
    assert_fires(out, "exec_from_tmp", staged)


@quiet("dropper_executed")
@quiet("exec_from_tmp")
def test_make_running_the_program_it_built_is_quiet(live, staged):
    d = os.path.dirname(staged)
    with open(f"{d}/Makefile", "w") as f:
        f.write("check:\n\t./payload\n")
    out = live.trigger(run("/usr/bin/make", "-s", "-C", d, "check", detach=True))
    assert any(e["event_type"] == "exec" and e["file"]["path"] == staged.encode() for e in out.events), out.describe()
    assert_quiet(out, "dropper_executed")
    assert_quiet(out, "exec_from_tmp")


@pytest.fixture
def shm_program():
    exe = f"/dev/shm/{unique()}"
    shutil.copy(TRUE, exe)
    yield exe
    remove(exe)


@fires("exec_from_dev_shm")
def test_program_run_from_dev_shm(live, shm_program):
    out = live.trigger(run(shm_program))
    assert_fires(out, "exec_from_dev_shm", shm_program)


@quiet("exec_from_dev_shm")
def test_program_claiming_dev_shm_in_argv0_is_quiet(live, shm_program):
    out = live.trigger(in_child(lambda: os.execv(TRUE, [shm_program])))  # argv[0] lies, the file does not
    assert_quiet(out, "exec_from_dev_shm")


def memfd_exec(name):
    def go():
        fd = os.memfd_create(name, 0)
        os.write(fd, IMAGE)
        os.execve(fd, [name], {})  # execveat(fd, "", AT_EMPTY_PATH)
    return go


@fires("exec_memfd")
def test_program_run_from_memfd(live):
    out = live.trigger(in_child(memfd_exec("payload")))
    assert_fires(out, "exec_memfd", "/memfd:payload")


@quiet("exec_memfd")
def test_runc_cloned_binary_is_quiet(live):
    out = live.trigger(in_child(memfd_exec("runc_cloned:/proc/self/exe")))
    assert any(e["event_type"] == "exec" for e in out.events), out.describe()
    assert_quiet(out, "exec_memfd")


@pytest.fixture
def program(tmp_path):
    d = f"/var/lib/{unique()}"  # not a staging directory: only the deletion matters here
    os.mkdir(d)
    exe = f"{d}/updater"
    shutil.copy(TRUE, exe)
    yield exe
    remove(d)


@fires("exec_deleted_file")
def test_program_run_after_its_file_was_deleted(live, program):
    def go():
        fd = os.open(program, os.O_RDONLY)
        os.unlink(program)
        os.execve(fd, ["updater"], {})
    out = live.trigger(in_child(go))
    assert_fires(out, "exec_deleted_file", program)


@quiet("exec_deleted_file")
def test_program_run_through_its_fd_is_quiet(live, program):
    def go():  # fexecve like the deletion case, but the file is still there
        os.execve(os.open(program, os.O_RDONLY), ["updater"], {})
    out = live.trigger(in_child(go))
    # with the pack's policy the exec is not even published (no rule's approver accepts it)
    assert any(e["event_type"] == "exec" and e["file"]["path"] == program.encode() for e in out.events) \
        or live.kernel_policy, out.describe()
    assert_quiet(out, "exec_deleted_file")


@pytest.fixture
def container():
    c = Container()
    c.create()
    yield c
    c.remove()


@pytest.fixture
def rootfs(tmp_path):
    """The container's image: a directory with a program in it; in the container an overlay covers it."""
    d = tmp_path / "rootfs"
    (d / "bin").mkdir(parents=True)
    shutil.copy(TRUE, d / "bin" / "app")
    return str(d)


@fires("container_drift")
def test_program_written_in_the_container_then_run(live, container, rootfs, scratch):
    def drift():
        shutil.copy(TRUE, f"{rootfs}/bin/miner")  # lands in the upper layer
        os.chmod(f"{rootfs}/bin/miner", 0o755)
        os.execv(f"{rootfs}/bin/miner", ["miner"])
    out = live.trigger(in_child(drift, container=container, ns=Namespace(scratch, overlay=(rootfs,))))
    hits = assert_fires(out, "container_drift", f"{rootfs}/bin/miner")
    assert hits[0]["event"]["container_id"] == container.id


@quiet("container_drift")
def test_image_program_run_in_the_container_is_quiet(live, container, rootfs, scratch):
    out = live.trigger(in_child(lambda: os.execv(f"{rootfs}/bin/app", ["app"]), container=container,
                                ns=Namespace(scratch, overlay=(rootfs,))))
    execs = [e for e in out.events if e["event_type"] == "exec"]
    assert execs and execs[0]["container_id"] == container.id and execs[0]["attrs"].get("upper_layer") == "0", \
        out.describe()
    assert_quiet(out, "container_drift")


@fires("shell_in_container")
def test_shell_started_in_a_container(live, container):
    out = live.trigger(run("/bin/sh", "-c", "exit 0", container=container))
    hits = assert_fires(out, "shell_in_container")
    assert hits[0]["event"]["container_id"] == container.id


@quiet("shell_in_container")
def test_shell_on_the_host_is_quiet(live):
    out = live.trigger(run("/bin/sh", "-c", "exit 0"))
    assert any(e["event_type"] == "exec" for e in out.events), out.describe()
    assert_quiet(out, "shell_in_container")


@fires("sensitive_file_symlinked")
def test_symlink_to_shadow(live, tmp_path):
    link = str(tmp_path / "s")
    out = live.trigger(in_child(lambda: os.symlink("/etc/shadow", link)))
    assert_fires(out, "sensitive_file_symlinked", link)


@quiet("sensitive_file_symlinked")
def test_symlink_to_hostname_is_quiet(live, tmp_path):
    link = str(tmp_path / "h")
    out = live.trigger(in_child(lambda: os.symlink("/etc/hostname", link)))
    assert_quiet(out, "sensitive_file_symlinked")


@fires("sensitive_file_hardlinked")
def test_hard_link_to_shadow(live, scratch):
    # a hard link needs the same filesystem: made inside an overlay over /etc (private namespace)
    out = live.trigger(in_child(lambda: os.link("/etc/shadow", "/etc/.cache-s"),
                                ns=Namespace(scratch, overlay=("/etc",))))
    assert_fires(out, "sensitive_file_hardlinked", "/etc/shadow")


@quiet("sensitive_file_hardlinked")
def test_hard_link_to_hostname_is_quiet(live, scratch):
    out = live.trigger(in_child(lambda: os.link("/etc/hostname", "/etc/.cache-h"),
                                ns=Namespace(scratch, overlay=("/etc",))))
    assert any(e["event_type"] == "link" for e in out.events) or live.kernel_policy, out.describe()
    assert_quiet(out, "sensitive_file_hardlinked")
