"""True paths: the kernel walk from the opened file (fd-based events) and the userspace canonicalisation of
caller strings (path-based events), for every way of naming a file an attacker could use, plus the
names and lengths that break naive collectors."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from fimstream.collector import records as R
from fimstream.collector.paths import lexical, resolve_in_root

from .conftest import b, only, root_only




def opened(capture, open_fn):
    """The open event of the fd that open_fn returns (closed afterwards)."""
    def act():
        fd = open_fn()
        os.close(fd)
        return fd

    events = capture(act)
    events = [e for e in events if e.type_name in ("open", "create") and e.retval == capture.result]
    assert len(events) == 1, events
    return events[0]


@contextlib.contextmanager
def mounted(*args, target):
    subprocess.run(["mount", *args, str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


# ------------------------------------------------------------------------------ kernel walk (fd-based)
@root_only
def test_relative_dirfd_dotdot_symlink_and_proc_fd(capture, d):
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"x")
    os.symlink(d / "sub", d / "lnk")
    true = b(d / "sub" / "f")
    ino = os.stat(true).st_ino
    old = os.getcwd()
    os.chdir(d)
    try:
        rel = opened(capture, lambda: os.open("sub/f", os.O_RDONLY))
    finally:
        os.chdir(old)
    dfd = os.open(d / "sub", os.O_RDONLY | os.O_DIRECTORY)
    via_dirfd = opened(capture, lambda: os.open("f", os.O_RDONLY, dir_fd=dfd))
    dotdot = opened(capture, lambda: os.open(d / "sub" / ".." / "sub" / "." / "f", os.O_RDONLY))
    symlinked = opened(capture, lambda: os.open(d / "lnk" / "f", os.O_RDONLY))
    fd = os.open(true, os.O_RDONLY)
    reopened = opened(capture, lambda: os.open(f"/proc/self/fd/{fd}", os.O_RDONLY))
    os.close(fd)
    os.close(dfd)
    for ev in (rel, via_dirfd, dotdot, symlinked, reopened):
        assert (ev.file.path, ev.file.ino, ev.file.flags) == (true, ino, 0)


@root_only
def test_hard_links_are_one_inode(capture, d):
    (d / "a").write_bytes(b"x")
    os.link(d / "a", d / "b")
    ea = opened(capture, lambda: os.open(d / "a", os.O_RDONLY))
    eb = opened(capture, lambda: os.open(d / "b", os.O_RDONLY))
    # each name is a true path (the dentry used); the identity is the same inode, with nlink 2
    assert (ea.file.path, eb.file.path) == (b(d / "a"), b(d / "b"))
    assert (ea.file.dev, ea.file.ino) == (eb.file.dev, eb.file.ino) == (os.stat(d / "a").st_dev, os.stat(d / "a").st_ino)
    assert ea.file.nlink == eb.file.nlink == 2


@root_only
def test_bind_mount_and_tmpfs(capture, d):
    (d / "src").mkdir()
    (d / "src" / "f").write_bytes(b"x")
    (d / "bind").mkdir()
    (d / "t").mkdir()
    st = os.stat(d / "src" / "f")
    with mounted("--bind", str(d / "src"), target=d / "bind"):
        ev = opened(capture, lambda: os.open(d / "bind" / "f", os.O_RDONLY))
    # the path the file was reached through, and the source's identity (inode rules see through aliases)
    assert (ev.file.path, ev.file.dev, ev.file.ino) == (b(d / "bind/f"), st.st_dev, st.st_ino)
    with mounted("-t", "tmpfs", "fimstream-test", target=d / "t"):
        (d / "t" / "deep").mkdir()
        ev = opened(capture, lambda: os.open(d / "t" / "deep" / "g", os.O_CREAT | os.O_WRONLY, 0o600))
        tst = os.stat(d / "t" / "deep" / "g")
    assert (ev.type_name, ev.file.path, ev.file.dev, ev.file.ino) == ("create", b(d / "t/deep/g"), tst.st_dev, tst.st_ino)
    assert ev.file.dev != st.st_dev


@root_only
def test_overlayfs(capture, d):
    for name in ("lower", "upper", "work", "merged"):
        (d / name).mkdir()
    (d / "lower" / "f").write_bytes(b"x")
    try:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work", str(d / "merged")],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"overlayfs unavailable: {e.stderr.decode().strip()}")
    try:
        ev = opened(capture, lambda: os.open(d / "merged" / "f", os.O_RDONLY))
        st = os.stat(d / "merged" / "f")
    finally:
        subprocess.run(["umount", "-l", str(d / "merged")], check=True)
    assert (ev.file.path, ev.file.ino, ev.file.dev) == (b(d / "merged/f"), st.st_ino, st.st_dev)


@root_only
def test_renamed_parent(capture, d):
    (d / "p1").mkdir()
    (d / "p1" / "f").write_bytes(b"x")
    dfd = os.open(d / "p1", os.O_RDONLY | os.O_DIRECTORY)
    old = os.getcwd()
    os.chdir(d / "p1")
    try:
        os.rename(d / "p1", d / "p2")  # the dirfd and the cwd now live under p2
        via_dirfd = opened(capture, lambda: os.open("f", os.O_RDONLY, dir_fd=dfd))
        via_cwd = opened(capture, lambda: os.open("f", os.O_RDONLY))
    finally:
        os.chdir(old)
        os.close(dfd)
    assert via_dirfd.file.path == via_cwd.file.path == b(d / "p2/f")


@root_only
@pytest.mark.parametrize("name", [b"\xff\xfe-not-utf8.bin", b"line1\nline2", b"tab\tand space", b"\x1b[31mred"])
def test_names_are_carried_as_bytes(capture, d, name):
    path = b(d) + b"/" + name
    ev = opened(capture, lambda: os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    assert (ev.file.path, ev.file.flags) == (path, 0)

    events = capture(lambda: os.unlink(path))
    assert only(events, "unlink").file.path == path


def _nest(base: bytes, component: bytes, count: int) -> tuple[int, bytes]:
    """Create `count` nested directories below base (relative mkdir: no PATH_MAX on the way);
    returns (fd of the deepest, its absolute path)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    path = base
    for _ in range(count):
        os.mkdir(component, dir_fd=fd)
        nfd = os.open(component, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        path += b"/" + component
    return fd, path


@root_only
def test_a_path_of_about_4096_bytes(capture, d):
    base = b(d)
    leaf = b"f"
    # fill up to exactly 4095 bytes (PATH_MAX without its NUL), the longest path a syscall accepts
    comp = b"c" * 200
    n = (4095 - len(base) - 2) // (len(comp) + 1)
    fd, deep = _nest(base, comp, n)
    leaf = b"f" * (4095 - len(deep) - 1)
    full = deep + b"/" + leaf
    assert len(full) == 4095
    ev = opened(capture, lambda: os.open(full, os.O_CREAT | os.O_WRONLY, 0o600))
    os.close(fd)
    assert (len(ev.file.path), ev.file.path, ev.file.flags) == (4095, full, 0)


@root_only
def test_a_path_longer_than_path_max_is_truncated_and_flagged(capture, d):
    fd, deep = _nest(b(d), b"L" * 250, 18)  # ~4600 bytes: reachable only relatively
    ev = opened(capture, lambda: os.open(b"f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    os.close(fd)
    full = deep + b"/f"
    assert ev.file.flags & R.PF_TRUNCATED
    assert len(ev.file.path) <= 4095 and full.endswith(ev.file.path)  # the deepest part, byte-exact


@root_only
def test_a_path_deeper_than_the_walk_bound_is_flagged(capture, d, collector):
    depth = collector.max_depth + 10
    fd, deep = _nest(b(d), b"d", depth)
    ev = opened(capture, lambda: os.open(b"f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    os.close(fd)
    assert ev.file.flags & R.PF_DEPTH and not ev.file.flags & R.PF_TRUNCATED
    assert (deep + b"/f").endswith(ev.file.path)
    assert ev.file.path.count(b"/") == collector.max_depth  # the deepest MAX_DEPTH components
    assert ev.file.ino == os.stat(deep + b"/f").st_ino  # identity is exact regardless


@root_only
def test_deleted_while_open(capture, d):
    f = d / "gone"
    f.write_bytes(b"x")
    fd = os.open(f, os.O_RDONLY)
    os.unlink(f)
    ev = only(capture(lambda: os.fchmod(fd, 0o600)), "chmod")
    os.close(fd)
    assert ev.file.path == b(f) and ev.file.flags & R.PF_DELETED


@root_only
def test_chroot_paths_are_relative_to_the_process_root(capture, d):
    jail = d / "jail"
    (jail / "etc").mkdir(parents=True)
    (jail / "etc" / "passwd").write_bytes(b"x")
    (d / "outside").write_bytes(b"y")

    def act():
        outside = os.open(d / "outside", os.O_RDONLY)
        pid = os.fork()
        if pid == 0:
            try:
                os.chroot(jail)
                os.chdir("/")
                os.close(os.open("/etc/passwd", os.O_RDONLY))
                os.fchmod(outside, 0o600)  # an fd from outside the root
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        os.close(outside)
        return pid

    events = [e for e in capture(act, children=True) if e.pid == capture.result]
    inside = only(events, "open")
    assert (inside.file.path, inside.file.flags) == (b"/etc/passwd", 0)
    escaped = only(events, "chmod")
    assert escaped.file.flags & R.PF_OUTSIDE_ROOT and escaped.file.path.endswith(b"/outside")


# ------------------------------------------------------------------- path strings (no fd): userspace side
@root_only
def test_path_strings_resolved_like_the_kernel(capture, d):
    (d / "real" / "sub").mkdir(parents=True)
    os.symlink("real", d / "rel-link")           # relative symlinked parent
    os.symlink(d / "real" / "sub", d / "abs-link")  # absolute symlinked parent
    for name in ("a", "b", "c"):
        (d / "real" / "sub" / name).write_bytes(b"")
    old = os.getcwd()
    os.chdir(d / "real")
    try:
        events = capture(lambda: (os.unlink("sub/../sub/a"), os.unlink(d / "rel-link" / "sub" / "b"),
                                  os.unlink(d / "abs-link" / "c")))
    finally:
        os.chdir(old)
    got = [(e.file.path, e.file.flags) for e in events if e.type_name == "unlink"]
    true = b(d / "real" / "sub")
    assert got == [(true + b"/a", 0), (true + b"/b", 0), (true + b"/c", 0)]


@root_only
def test_unresolvable_strings_keep_the_caller_string_and_the_bit(capture, d):
    events = capture(lambda: subprocess.run(["rm", "-f", f"{d}/no/such/dir/x"]), children=True)
    ev = [e for e in events if e.type_name == "unlink"][0]
    assert ev.retval == -2
    assert ev.file.path == b(d) + b"/no/such/dir/x" and ev.file.flags & R.PF_UNRESOLVED


def test_resolve_in_a_foreign_root(tmp_path):
    """Absolute symlinks inside a container/chroot resolve against that root, not ours."""
    root = tmp_path / "root"
    (root / "data" / "v1").mkdir(parents=True)
    os.symlink("/data/v1", root / "current")  # absolute, meaningful only inside `root`
    path, ok = resolve_in_root(b(root), b"/current/../v1/./file", follow_last=False)
    assert (path, ok) == (b"/data/v1/file", True)
    path, ok = resolve_in_root(b(root), b"/missing/dir/file", follow_last=False)
    assert (path, ok) == (b"/missing/dir/file", False)
    os.symlink("loop", root / "loop")
    assert resolve_in_root(b(root), b"/loop/x", follow_last=False)[1] is False
    assert lexical(b"/a//b/./c/../d/") == b"/a/b/d"


@root_only
def test_strings_of_processes_that_already_exited_are_still_resolved(capture, d):
    """`rm` is gone before its record is decoded: its root is known from its exec record (mount
    namespace) and its fork (inherited), not from /proc."""
    (d / "real").mkdir()
    os.symlink(d / "real", d / "lnk")
    (d / "real" / "x").write_bytes(b"")
    events = capture(lambda: subprocess.run(["rm", str(d / "lnk" / "x")], check=True), children=True, settle=0.3)
    ev = only(events, "unlink")
    assert not os.path.exists(f"/proc/{ev.pid}")
    assert (ev.file.path, ev.file.flags) == (b(d / "real" / "x"), 0)
