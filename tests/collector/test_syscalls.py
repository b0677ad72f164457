"""Every hooked syscall, called for real, produces the right event (type, syscall, path, flags, result,
process context). Runs as root against the running kernel."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading

import pytest

from fimstream.collector.event import H_AUID, H_COMM, H_EGID, H_EUID, H_GID, H_PPID, H_SESSION, H_TID, H_UID
from fimstream.collector.records import PF_UNRESOLVED

from .conftest import b, only, root_only, syscall

pytestmark = root_only

SYS_open, SYS_creat, SYS_openat2 = 2, 85, 437
SYS_unlink, SYS_rename, SYS_renameat, SYS_renameat2 = 87, 82, 264, 316
SYS_chmod, SYS_fchmodat2, SYS_lchown, SYS_fchownat = 90, 452, 94, 260
SYS_unlinkat, SYS_fchmodat = 263, 268
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1




class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# ------------------------------------------------------------------------------------------------ open
def test_openat_create_then_open(capture, d):
    path = d / "new.txt"

    def act():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o640)
        os.close(fd)
        fd2 = os.open(path, os.O_RDONLY)
        os.close(fd2)
        return fd, fd2

    events = [e for e in capture(act) if e.file and e.file.path == b(path)]
    fd, fd2 = capture.result
    create, opened = events
    st = os.stat(path)
    assert (create.type_name, create.syscall, create.retval) == ("create", "openat", fd)
    assert create.flags & os.O_CREAT and create.mode == 0o640
    assert (opened.type_name, opened.retval, opened.flags & os.O_ACCMODE) == ("open", fd2, os.O_RDONLY)
    for ev in (create, opened):
        assert (ev.file.ino, ev.file.dev, ev.file.nlink, ev.file.mode) == (st.st_ino, st.st_dev, 1, st.st_mode)
        assert (ev.file.uid, ev.file.gid, ev.file.flags) == (st.st_uid, st.st_gid, 0)


def test_openat2_with_resolve_flags(capture, d):
    (d / "f").write_bytes(b"x")
    how = OpenHow(os.O_RDONLY, 0, 0x04)  # RESOLVE_NO_SYMLINKS

    def act():
        fd = syscall(SYS_openat2, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(b(d / "f")), ctypes.byref(how),
                     ctypes.c_size_t(ctypes.sizeof(how)))
        os.close(fd)
        return fd

    ev = only(capture(act), "open", b(d / "f"))
    assert (ev.syscall, ev.retval, ev.attrs) == ("openat2", capture.result, {"resolve": "0x4"})


def test_legacy_open_and_creat(capture, d):
    def act():
        fd1 = syscall(SYS_creat, ctypes.c_char_p(b(d / "c")), ctypes.c_int(0o600))
        fd2 = syscall(SYS_open, ctypes.c_char_p(b(d / "c")), ctypes.c_int(os.O_RDONLY), ctypes.c_int(0))
        os.close(fd1)
        os.close(fd2)

    events = [e for e in capture(act) if e.file and e.file.path == b(d / "c")]
    assert [(e.syscall, e.type_name) for e in events] == [("creat", "create"), ("open", "open")]
    assert events[0].flags & (os.O_CREAT | os.O_TRUNC | os.O_WRONLY) == os.O_CREAT | os.O_TRUNC | os.O_WRONLY


def test_failed_open_carries_the_errno_and_the_path_asked_for(capture, d):
    def act():
        for p in (d / "missing", d / "nodir" / "missing"):
            try:
                os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                pass

    events = [e for e in capture(act) if e.retval == -2]
    by_path = {e.file.path: e for e in events}
    # parent exists: resolved (only the leaf is missing); parent missing: the caller's string, flagged
    assert by_path[b(d / "missing")].file.flags == 0
    assert by_path[b(d / "nodir/missing")].file.flags == PF_UNRESOLVED


# --------------------------------------------------------------------------------------- unlink, rmdir
def test_unlinkat_unlink_rmdir(capture, d):
    for name in ("a", "b"):
        (d / name).write_bytes(b"")
    (d / "sub").mkdir()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def act():
        os.unlink("a", dir_fd=dfd)  # unlinkat(dfd, "a", 0)
        syscall(SYS_unlink, ctypes.c_char_p(b(d / "b")))
        os.rmdir(d / "sub")

    events = [e for e in capture(act) if e.type_name in ("unlink", "rmdir")]
    os.close(dfd)
    got = [(e.type_name, e.syscall, e.file.path, e.retval, e.file.flags) for e in events]
    assert got == [("unlink", "unlinkat", b(d / "a"), 0, 0), ("unlink", "unlink", b(d / "b"), 0, 0),
                   ("rmdir", "rmdir", b(d / "sub"), 0, 0)]


def test_int_arguments_are_taken_as_the_kernel_takes_them(capture, d):
    """Arguments are read from the saved registers at sys_exit: an int or umode_t parameter is the low part of
    its register, whatever the caller left above it (the kernel casts the same way)."""
    (d / "a").write_bytes(b"")
    (d / "m").write_bytes(b"")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    junk = 0x5A5A5A5A << 32

    def act():
        mode = syscall(SYS_fchmodat, ctypes.c_long(junk | dfd), ctypes.c_char_p(b"m"),
                       ctypes.c_long(junk | 0x5A5A0000 | 0o604))  # umode_t: 16 bits
        gone = syscall(SYS_unlinkat, ctypes.c_long(junk | dfd), ctypes.c_char_p(b"a"), ctypes.c_long(junk))
        return mode, gone

    events = [e for e in capture(act) if e.type_name in ("chmod", "unlink", "rmdir")]
    os.close(dfd)
    assert capture.result == (0, 0)
    assert os.stat(d / "m").st_mode & 0o7777 == 0o604 and not (d / "a").exists()
    got = [(e.type_name, e.syscall, e.file.path, e.mode if e.type_name == "chmod" else e.flags) for e in events]
    assert got == [("chmod", "fchmodat", b(d / "m"), 0o604), ("unlink", "unlinkat", b(d / "a"), 0)]


# ---------------------------------------------------------------------------------------------- rename
def test_renameat2_source_and_destination(capture, d):
    (d / "src").write_bytes(b"x")
    ino = os.stat(d / "src").st_ino
    (d / "dir").mkdir()

    def act():
        return syscall(SYS_renameat2, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(b(d / "src")), ctypes.c_int(AT_FDCWD),
                       ctypes.c_char_p(b(d / "dir" / "dst")), ctypes.c_uint(RENAME_NOREPLACE))

    ev = only(capture(act), "rename")
    assert (ev.syscall, ev.retval, ev.flags) == ("renameat2", 0, RENAME_NOREPLACE)
    assert (ev.file.path, ev.target.path) == (b(d / "src"), b(d / "dir/dst"))
    assert ev.file.ino == ev.target.ino == ino  # the moved inode, read at the destination


def test_rename_and_renameat(capture, d):
    (d / "x").write_bytes(b"")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def act():
        syscall(SYS_rename, ctypes.c_char_p(b(d / "x")), ctypes.c_char_p(b(d / "y")))
        syscall(SYS_renameat, ctypes.c_int(dfd), ctypes.c_char_p(b"y"), ctypes.c_int(dfd), ctypes.c_char_p(b"z"))

    events = [e for e in capture(act) if e.type_name == "rename"]
    os.close(dfd)
    assert [(e.syscall, e.file.path, e.target.path) for e in events] == [
        ("rename", b(d / "x"), b(d / "y")), ("renameat", b(d / "y"), b(d / "z"))]


# ----------------------------------------------------------------------------------------------- chmod
def test_chmod_family(capture, d):
    f = d / "m"
    f.write_bytes(b"")
    st = os.stat(f)

    def act():
        os.chmod(f, 0o600)  # fchmodat (glibc) or chmod
        syscall(SYS_chmod, ctypes.c_char_p(b(f)), ctypes.c_int(0o640))
        syscall(SYS_fchmodat2, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(b(f)), ctypes.c_int(0o644), ctypes.c_uint(0))
        fd = os.open(f, os.O_RDONLY)
        os.fchmod(fd, 0o400)
        os.close(fd)

    events = [e for e in capture(act) if e.type_name == "chmod"]
    assert [(e.mode, e.retval, e.file.path) for e in events] == [
        (0o600, 0, b(f)), (0o640, 0, b(f)), (0o644, 0, b(f)), (0o400, 0, b(f))]
    assert [e.syscall for e in events][1:] == ["chmod", "fchmodat2", "fchmod"]
    assert events[0].syscall in ("fchmodat", "chmod")
    assert all(e.file.ino == st.st_ino for e in events)


# ----------------------------------------------------------------------------------------------- chown
def test_chown_family(capture, d):
    f = d / "o"
    f.write_bytes(b"")
    os.symlink(f, d / "link")
    ino = os.stat(f).st_ino
    link_ino = os.lstat(d / "link").st_ino

    def act():
        os.chown(f, 1234, 5678)
        syscall(SYS_lchown, ctypes.c_char_p(b(d / "link")), ctypes.c_uint(42), ctypes.c_uint(0xFFFFFFFF))
        fd = os.open(f, os.O_RDONLY)
        os.fchown(fd, 0, -1)
        syscall(SYS_fchownat, ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_uint(7), ctypes.c_uint(8),
                ctypes.c_int(AT_EMPTY_PATH))
        os.close(fd)

    events = [e for e in capture(act) if e.type_name == "chown"]
    got = [(e.owner_uid, e.owner_gid, e.file.path, e.file.ino) for e in events]
    assert got == [(1234, 5678, b(f), ino), (42, -1, b(d / "link"), link_ino), (0, -1, b(f), ino), (7, 8, b(f), ino)]
    assert [e.syscall for e in events][1:] == ["lchown", "fchown", "fchownat"]


# ------------------------------------------------------------------------------------ exec, fork, exit
def test_exec_fork_exit_with_process_context(capture):
    events = capture(lambda: subprocess.run(["/bin/sh", "-c", "exit 7"]).returncode, children=True)
    me = os.getpid()
    fork = only([e for e in events if e.pid == me], "fork")
    child = fork.child_pid
    exe = os.path.realpath("/bin/sh").encode()
    ex = only([e for e in events if e.pid == child], "exec")
    assert (ex.syscall, ex.retval, ex.hdr[H_PPID], ex.hdr[H_UID]) == ("execve", 0, me, os.getuid())
    assert ex.hdr[H_COMM].rstrip(b"\0") == b"sh"
    assert ex.exec.exe == exe and ex.file.path == exe
    assert (ex.exec.exe_ino, ex.exec.exe_dev) == (os.stat(exe).st_ino, os.stat(exe).st_dev)
    assert ex.exec.args == [b"/bin/sh", b"-c", b"exit 7"] and not ex.exec.args_truncated
    assert ex.attrs == {"filename": "/bin/sh", "boot_ns": str(capture.collector.boot_offset_ns)}
    st = os.stat(exe)
    assert (ex.file.mtime_ns, ex.file.ctime_ns) == (st.st_mtime_ns, st.st_ctime_ns)
    assert ex.cred is None  # same credentials after the exec
    ex_it = only([e for e in events if e.pid == child], "exit")
    assert ex_it.exit_code == 7 << 8
    assert capture.collector.procs.procs[child].exe == exe  # the cache followed the exec


def test_failed_exec(capture, d):
    script = d / "noexec.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)

    def act():
        pid = os.fork()
        if pid == 0:
            try:
                os.execv(script, [str(script)])
            finally:
                os._exit(9)
        os.waitpid(pid, 0)
        return pid

    events = capture(act, children=True)
    ex = only([e for e in events if e.pid == capture.result], "exec")
    assert (ex.syscall, ex.retval, ex.file.path) == ("execve", -13, b(script))  # EACCES


def test_process_context_of_another_thread_and_other_credentials(capture, d):
    f = d / "ctx"
    f.write_bytes(b"")
    os.chmod(d, 0o755)
    os.chmod(f, 0o644)

    def in_thread():
        t = threading.Thread(target=lambda: os.close(os.open(f, os.O_RDONLY)))
        t.start()
        t.join()
        return t.native_id

    ev = only(capture(in_thread), "open", b(f))
    assert ev.hdr[H_TID] == capture.result != os.getpid()

    def as_other_user():
        pid = os.fork()
        if pid == 0:
            try:
                os.setresgid(2001, 2002, 2002)
                os.setresuid(1001, 1002, 1002)
                os.close(os.open(f, os.O_RDONLY))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        return pid

    ev = only([e for e in capture(as_other_user, children=True) if e.pid == capture.result], "open", b(f))
    assert (ev.hdr[H_UID], ev.hdr[H_EUID], ev.hdr[H_GID], ev.hdr[H_EGID]) == (1001, 1002, 2001, 2002)
    assert ev.hdr[H_AUID] == int(open("/proc/self/loginuid").read())
    assert ev.hdr[H_SESSION] == int(open("/proc/self/sessionid").read())


def test_process_cache_knows_processes_older_than_the_collector(collector):
    me = collector.procs.get(os.getpid())
    assert me.exe == os.path.realpath(sys.executable).encode()
    assert me.args == [os.fsencode(a) for a in open("/proc/self/cmdline", "rb").read().split(b"\0")[:-1]]
    parent = collector.procs.get(os.getppid())  # started before us, so before the collector
    assert parent.source.startswith("proc")
    assert parent.exe == os.readlink(f"/proc/{os.getppid()}/exe").encode()
    chain = collector.procs.ancestors(me)
    assert chain[0] is parent and len(chain) >= 2
