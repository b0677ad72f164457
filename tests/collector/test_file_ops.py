"""The file sensor's phase-2 event types, each from a real syscall: first write per open, truncate, link,
symlink, mkdir, mknod, setxattr, shared writable mmap, memfd_create, mount/umount/move_mount. Fields as the
rule catalog reads them (fimstream/rules/fields.py): file/target, flags, mode, attrs."""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
import subprocess

import pytest

from .conftest import b, libc, only, root_only, syscall, under

pytestmark = root_only

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
SYS_link, SYS_symlink, SYS_mkdir, SYS_mknod, SYS_truncate = 86, 88, 83, 133, 76
SYS_lsetxattr, SYS_fsetxattr, SYS_memfd_create = 189, 190, 319
SYS_mount, SYS_umount2, SYS_open_tree, SYS_move_mount = 165, 166, 428, 429
MS_BIND, MS_MOVE = 4096, 8192
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 4





# ------------------------------------------------------------------------------------------- write
def test_first_write_per_open_only(capture, d):
    f = d / "w"
    f.write_bytes(b"")

    def act():
        fd = os.open(f, os.O_WRONLY | os.O_APPEND)
        for _ in range(5):
            os.write(fd, b"x")
        os.writev(fd, [b"y"])
        os.close(fd)
        fd = os.open(f, os.O_RDWR)  # a new open: its first write is an event again
        os.pwrite(fd, b"z", 0)
        os.write(fd, b"z")
        os.close(fd)

    events = under(capture(act), "write", d)
    assert [(e.syscall, e.file.path) for e in events] == [("write", b(f)), ("pwrite64", b(f))]
    assert events[0].flags & os.O_APPEND and events[0].file.ino == os.stat(f).st_ino


def test_the_first_write_is_one_that_wrote_and_carries_its_result(capture, d):
    """Traced at sys_exit: a write that failed changed nothing and is not the open's first; the event's
    retval is the byte count."""
    f = d / "w"
    f.write_bytes(b"")

    def act():
        fd = os.open(f, os.O_WRONLY)
        buf = ctypes.create_string_buffer(b"abc")
        assert libc.write(fd, ctypes.c_void_p(1), 3) == -1  # EFAULT: a bad buffer, nothing written
        assert libc.write(fd, buf, 3) == 3
        os.write(fd, b"more")
        os.close(fd)

    events = under(capture(act), "write", d)
    assert [(e.syscall, e.retval) for e in events] == [("write", 3)]


def test_writes_to_pipes_and_terminals_are_not_file_writes(capture):
    r, w = os.pipe()

    def act():
        os.write(w, b"x")

    events = [e for e in capture(act) if e.type_name == "write"]
    os.close(r)
    os.close(w)
    assert events == []


# ---------------------------------------------------------------------------------------- truncate
def test_truncate_and_ftruncate(capture, d):
    f = d / "t"
    f.write_bytes(b"0123456789")

    def act():
        syscall(SYS_truncate, ctypes.c_char_p(b(f)), ctypes.c_long(4))
        fd = os.open(f, os.O_WRONLY)
        os.ftruncate(fd, 2)
        os.close(fd)

    events = under(capture(act), "truncate", d)
    assert [(e.syscall, e.file.path, e.retval, e.attrs) for e in events] == [
        ("truncate", b(f), 0, {"length": "4"}), ("ftruncate", b(f), 0, {"length": "2"})]
    assert all(e.file.ino == os.stat(f).st_ino for e in events)


# -------------------------------------------------------------------------------------------- link
def test_link_and_linkat(capture, d):
    (d / "orig").write_bytes(b"x")
    ino = os.stat(d / "orig").st_ino
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def act():
        syscall(SYS_link, ctypes.c_char_p(b(d / "orig")), ctypes.c_char_p(b(d / "l1")))
        os.link("orig", "l2", src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=True)  # linkat(.., AT_SYMLINK_FOLLOW)

    events = under(capture(act), "link", d)
    os.close(dfd)
    got = [(e.syscall, e.file.path, e.target.path, e.retval) for e in events]
    assert got == [("link", b(d / "orig"), b(d / "l1"), 0), ("linkat", b(d / "orig"), b(d / "l2"), 0)]
    assert events[1].flags & AT_SYMLINK_FOLLOW
    assert all(e.file.ino == e.target.ino == ino and e.target.nlink >= 2 for e in events)


# ----------------------------------------------------------------------------------------- symlink
def test_symlink_and_symlinkat_keep_the_text_as_written(capture, d):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def act():
        syscall(SYS_symlink, ctypes.c_char_p(b"/etc/shadow"), ctypes.c_char_p(b(d / "s1")))
        os.symlink("../x/./y", "s2", dir_fd=dfd)  # symlinkat: the text is never resolved

    events = under(capture(act), "symlink", d)
    os.close(dfd)
    got = [(e.syscall, e.file.path, e.target.path) for e in events]
    assert got == [("symlink", b(d / "s1"), b"/etc/shadow"), ("symlinkat", b(d / "s2"), b"../x/./y")]
    assert events[0].file.ino == os.lstat(d / "s1").st_ino  # the link itself, not what it points to


# ------------------------------------------------------------------------------------- mkdir, mknod
def test_mkdir_and_mkdirat(capture, d):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def act():
        syscall(SYS_mkdir, ctypes.c_char_p(b(d / "m1")), ctypes.c_int(0o750))
        os.mkdir("m2", 0o700, dir_fd=dfd)

    events = under(capture(act), "mkdir", d)
    os.close(dfd)
    assert [(e.syscall, e.file.path, e.mode) for e in events] == [("mkdir", b(d / "m1"), 0o750),
                                                                 ("mkdirat", b(d / "m2"), 0o700)]
    assert stat.S_ISDIR(events[0].file.mode)


def test_mknod_and_mknodat(capture, d):
    def act():
        syscall(SYS_mknod, ctypes.c_char_p(b(d / "fifo")), ctypes.c_int(stat.S_IFIFO | 0o600), ctypes.c_uint(0))
        os.mknod(d / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # mknodat

    events = under(capture(act), "mknod", d)
    got = [(e.syscall, e.file.path, e.mode, e.attrs) for e in events]
    assert got == [("mknod", b(d / "fifo"), stat.S_IFIFO | 0o600, None),
                   ("mknodat", b(d / "null"), stat.S_IFCHR | 0o600, {"rdev": "1:3"})]


# ---------------------------------------------------------------------------------------- setxattr
def test_setxattr_family_names_the_attribute(capture, d):
    f = d / "x"
    f.write_bytes(b"")
    os.symlink(f, d / "xl")

    def act():
        os.setxattr(f, "user.a", b"1")
        syscall(SYS_lsetxattr, ctypes.c_char_p(b(f)), ctypes.c_char_p(b"user.b"), ctypes.c_char_p(b"2"),
                ctypes.c_size_t(1), ctypes.c_int(0))
        fd = os.open(f, os.O_RDONLY)
        os.setxattr(fd, "user.c", b"3")  # fsetxattr
        os.close(fd)
        os.setxattr(d / "xl", "user.d", b"4")  # setxattr follows the symlink

    events = under(capture(act), "setxattr", d)
    got = [(e.syscall, e.file.path, e.attrs["name"], e.retval) for e in events]
    assert got == [("setxattr", b(f), "user.a", 0), ("lsetxattr", b(f), "user.b", 0),
                   ("fsetxattr", b(f), "user.c", 0), ("setxattr", b(f), "user.d", 0)]


# -------------------------------------------------------------------------------------------- mmap
def test_mmap_shared_writable_only(capture, d):
    f = d / "mm"
    f.write_bytes(b"\0" * 4096)

    def act():
        fd = os.open(f, os.O_RDWR)
        m1 = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m2 = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)  # private: not the file
        m3 = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)  # read-only: no write
        for m in (m1, m2, m3):
            m.close()
        os.close(fd)

    events = under(capture(act), "mmap", d)
    assert len(events) == 1, events
    ev = events[0]
    assert ev.flags & 0xFFFFFFFF == mmap.PROT_READ | mmap.PROT_WRITE and (ev.flags >> 32) & mmap.MAP_SHARED
    assert ev.retval > 0 and ev.file.ino == os.stat(f).st_ino


# ------------------------------------------------------------------------------------ memfd_create
def test_memfd_create_names_the_memfd(capture):
    def act():
        fd = syscall(SYS_memfd_create, ctypes.c_char_p(b"payload"), ctypes.c_uint(1))  # MFD_CLOEXEC
        os.write(fd, b"x")
        os.close(fd)

    events = capture(act)
    ev = only(events, "memfd_create")
    assert ev.attrs == {"name": "payload"} and ev.flags == 1 and ev.retval >= 0
    assert b"memfd:payload" in ev.file.path
    # its first write is a write event on the same file
    assert [e.file.path for e in events if e.type_name == "write"] == [ev.file.path]


# ------------------------------------------------------------------------------- mount, umount2
def test_mount_umount_and_move_mount(capture, d):
    (d / "src").mkdir()
    (d / "mnt").mkdir()
    (d / "mnt2").mkdir()

    def act():
        syscall(SYS_mount, ctypes.c_char_p(b"tmpfs"), ctypes.c_char_p(b(d / "mnt")), ctypes.c_char_p(b"tmpfs"),
                ctypes.c_ulong(0), ctypes.c_void_p(0))
        syscall(SYS_umount2, ctypes.c_char_p(b(d / "mnt")), ctypes.c_int(0))
        syscall(SYS_mount, ctypes.c_char_p(b(d / "src")), ctypes.c_char_p(b(d / "mnt")), ctypes.c_char_p(0),
                ctypes.c_ulong(MS_BIND), ctypes.c_void_p(0))
        tree = syscall(SYS_open_tree, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(b(d / "src")),
                       ctypes.c_uint(OPEN_TREE_CLONE))
        moved = syscall(SYS_move_mount, ctypes.c_int(tree), ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                        ctypes.c_char_p(b(d / "mnt2")), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        os.close(tree)
        for m in ("mnt", "mnt2"):
            syscall(SYS_umount2, ctypes.c_char_p(b(d / m)), ctypes.c_int(0))
        return moved

    events = capture(act)
    assert capture.result == 0
    mounts = [e for e in events if e.type_name == "mount" and e.target and e.target.path.startswith(b(d))]
    got = [(e.syscall, e.file.path, e.target.path, e.attrs) for e in mounts]
    assert got[0] == ("mount", b"tmpfs", b(d / "mnt"), {"fs_type": "tmpfs"})
    assert got[1][:3] == ("mount", b(d / "src"), b(d / "mnt")) and mounts[1].flags & MS_BIND
    assert got[2][0] == "move_mount" and got[2][2] == b(d / "mnt2")
    umounts = [(e.syscall, e.file.path, e.retval) for e in under(events, "umount", d)]
    assert umounts == [("umount2", b(d / "mnt"), 0), ("umount2", b(d / "mnt"), 0), ("umount2", b(d / "mnt2"), 0)]


def test_a_failed_mount_is_reported_with_its_error(capture, d):
    def act():
        return syscall(SYS_mount, ctypes.c_char_p(b"none"), ctypes.c_char_p(b(d / "absent")),
                       ctypes.c_char_p(b"tmpfs"), ctypes.c_ulong(0), ctypes.c_void_p(0))

    events = capture(act)
    ev = [e for e in events if e.type_name == "mount" and e.target and e.target.path == b(d / "absent")]
    assert len(ev) == 1 and ev[0].retval == capture.result < 0


def test_events_from_a_shell_are_typed_like_the_rule_catalog(capture, d):
    """The catalog's own field readers (fimstream/rules/fields.py) see what rules expect on the records."""
    from fimstream.rules import fields

    script = f"ln -s /etc/passwd {d}/p && mkdir {d}/dir && : > {d}/f && truncate -s 0 {d}/f"
    events = capture(lambda: subprocess.run(["sh", "-c", script], check=True), children=True)
    sym = [e for e in events if e.type_name == "symlink"][0]
    record = {"event_type": "symlink", "file": sym.file.to_record(), "target": sym.target.to_record(),
              "attrs": {}, "process": {}}
    assert fields.lookup("symlink.file.destination.path").read(record) == b"/etc/passwd"
    assert fields.lookup("symlink.file.name").read(record) == b"p"
    assert {e.type_name for e in events} >= {"symlink", "mkdir", "create", "truncate"}
