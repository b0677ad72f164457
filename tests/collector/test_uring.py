"""io_uring sensor: file operations done through a real io_uring (tests/collector/uring_ops.c, raw syscalls,
compiled here with gcc) never reach the syscall tracepoints; they must still give open/create/write
events with true paths, results and flags."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fimstream.collector import records as R
from fimstream.collector.policy import HF_UNSURE, PS_HAZARDS_FULL, PS_REPOCH

from .conftest import b, root_only, under
from .filtering import filtering  # noqa: F401 - the fixture
from .test_filter import _chmod_of_watched_f, learn_a_b_plain, unlink_str

pytestmark = root_only

O_WRONLY, O_RDWR, O_CREAT = os.O_WRONLY, os.O_RDWR, os.O_CREAT
RESOLVE_NO_SYMLINKS = 0x04


@pytest.fixture(scope="module")
def uring_ops(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the io_uring driver")
    exe = tmp_path_factory.mktemp("uring") / "uring_ops"
    src = Path(__file__).with_name("uring_ops.c")
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(src)], check=True, capture_output=True)
    return str(exe)


def run(capture, uring_ops, *steps, cwd=None, pass_fds=(), env=None):
    """Run the driver; returns (its results in step order, its events)."""
    def act():
        return subprocess.run([uring_ops, *steps], capture_output=True, check=True, cwd=cwd, pass_fds=pass_fds,
                              env=dict(os.environ, **(env or {})))
    events = capture(act, children=True)
    lines = capture.result.stdout.decode().split()
    results = [int(v) for v in lines[1::2]]
    child = {e.pid for e in events if e.syscall.startswith("io_uring:")}
    return results, [e for e in events if e.pid in child]


def uring(events, path=None):
    return [e for e in events if e.syscall.startswith("io_uring:") and (path is None or e.file.path == path)]


def test_open_create_write_read_close(capture, uring_ops, tmp_path):
    f = tmp_path.resolve() / "f"
    pf = os.fsencode(f)
    results, events = run(capture, uring_ops, f"openat,{f},{O_CREAT | O_WRONLY},0640", "write,$0", "write,$0",
                          "close,$0", f"openat,{f},0", "read,$4", "read,$4")
    fd, w1, w2, closed, fd2, r1, r2 = results
    assert (w1, w2, closed, r1, r2) == (5, 5, 0, 5, 5) and fd >= 0 and fd2 >= 0
    st = os.stat(f)
    got = [(e.type_name, e.syscall, e.retval) for e in uring(events, pf)]
    # one create, the first write only, the reopen; the reads belong to an open already reported
    assert got == [("create", "io_uring:openat", fd), ("write", "io_uring:write", 0), ("open", "io_uring:openat", fd2)]
    create, write, reopen = uring(events, pf)
    assert create.flags & (O_CREAT | O_WRONLY) == O_CREAT | O_WRONLY and create.mode == 0o640
    for ev in (create, write, reopen):
        assert (ev.file.ino, ev.file.dev, ev.file.mode, ev.file.flags) == (st.st_ino, st.st_dev, st.st_mode, 0)
    assert write.attrs == {"fd": str(fd)} and write.flags & os.O_ACCMODE == O_WRONLY
    # none of it went through a syscall the file sensor hooks
    assert not [e for e in events if e.file is not None and e.file.path == pf and not e.syscall.startswith("io_uring:")]


def test_read_of_an_fd_opened_elsewhere_and_a_second_write_after_close(capture, uring_ops, tmp_path):
    f = tmp_path.resolve() / "given"
    f.write_bytes(b"hello world")
    fd = os.open(f, os.O_RDWR)
    try:
        results, events = run(capture, uring_ops, f"read,{fd}", f"read,{fd}", f"write,{fd}", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert results == [5, 5, 5]
    got = [(e.type_name, e.syscall, e.flags & os.O_ACCMODE) for e in uring(events, os.fsencode(f))]
    assert got == [("open", "io_uring:read", O_RDWR), ("write", "io_uring:write", O_RDWR)]


def test_a_struct_file_reused_for_another_file_is_not_taken_for_the_one_reported(capture, uring_ops, tmp_path):
    """A read is reported once per open file, keyed by its struct file; close(2) is not seen, and the
    kernel hands the freed struct file to the next open at once: that open's first read must arrive."""
    a, b_ = tmp_path.resolve() / "a", tmp_path.resolve() / "b"
    a.write_bytes(b"hello world")
    b_.write_bytes(b"hello world")
    results, events = run(capture, uring_ops, f"sysopen,{a}", "read,$0", "sysclose,$0", f"sysopen,{b_}", "read,$3")
    assert results[1] == 5 and results[4] == 5
    got = [(e.syscall, e.file.path) for e in uring(events)]
    assert got == [("io_uring:read", os.fsencode(a)), ("io_uring:read", os.fsencode(b_))], events


def test_relative_failed_and_openat2(capture, uring_ops, tmp_path):
    d = tmp_path.resolve()
    (d / "sub").mkdir()
    (d / "sub" / "x").write_bytes(b"")
    os.symlink(d / "sub" / "x", d / "link")
    results, events = run(capture, uring_ops, "openat,sub/../sub/x,0", "openat,missing/y,0", "openat,sub/nope,0",
                          f"openat2,{d}/link,0,{RESOLVE_NO_SYMLINKS}", f"openat2,{d}/sub/x,0,{RESOLVE_NO_SYMLINKS}",
                          cwd=d)
    ok, no_dir, no_file, loop, ok2 = results
    assert (no_dir, no_file, loop) == (-errno.ENOENT, -errno.ENOENT, -errno.ELOOP) and ok >= 0 and ok2 >= 0
    by = [(e.syscall, e.retval, e.file.path, e.file.flags) for e in uring(events)]
    assert by == [
        ("io_uring:openat", ok, os.fsencode(d / "sub/x"), 0),  # the true path, from the fd
        ("io_uring:openat", -errno.ENOENT, os.fsencode(d / "missing/y"), R.PF_UNRESOLVED),  # no such directory
        ("io_uring:openat", -errno.ENOENT, os.fsencode(d / "sub/nope"), 0),
        # refused for its symlink: named like a failed openat(2), through the link (what it leads to)
        ("io_uring:openat2", -errno.ELOOP, os.fsencode(d / "sub/x"), 0),
        ("io_uring:openat2", ok2, os.fsencode(d / "sub/x"), 0),
    ]
    assert uring(events)[3].attrs == {"resolve": hex(RESOLVE_NO_SYMLINKS)}
    assert uring(events)[3].file.ino == os.stat(d / "sub/x").st_ino  # it exists: its identity, by stat


def test_direct_descriptors_and_registered_files(capture, uring_ops, tmp_path):
    g = tmp_path.resolve() / "g"
    results, events = run(capture, uring_ops, "sparse,4", f"openat,{g},{O_CREAT | O_RDWR},0600,3", "writefix,2",
                          "readfix,2")
    assert results == [0, 0, 5, 5]
    create, write = uring(events, os.fsencode(g))  # the read: same open file, already reported
    assert (create.type_name, create.retval, create.attrs) == ("create", 0, {"direct_slot": "2"})
    assert create.file.ino == os.stat(g).st_ino  # walked from the registered file, not the string
    assert (write.type_name, write.syscall, write.attrs) == ("write", "io_uring:write", {"fixed_index": "2"})


def test_a_request_that_skips_its_completion_is_reported_at_submission(capture, uring_ops, tmp_path):
    f = tmp_path.resolve() / "quiet"
    f.write_bytes(b"")
    results, events = run(capture, uring_ops, f"openat,{f},0,0,0,1")
    assert results == [1 << 30]  # success posted no CQE
    (ev,) = uring(events)
    assert (ev.type_name, ev.retval, ev.file.path, ev.file.flags) == ("open", 0, os.fsencode(f), 0)
    assert ev.attrs == {"uring": "submission"}
    assert ev.file.ino == os.stat(f).st_ino


def test_a_completion_whose_submission_was_not_seen_is_reported_from_its_file(collector, capture, uring_ops,
                                                                              tmp_path):
    """An open submitted while the sensor was not attached (a collector that started while it waited)
    completes after: the record is built from the new fd alone, flags from the opened file."""
    fifo = tmp_path.resolve() / "fifo"
    os.mkfifo(fifo)
    sensor = next(s for s in collector.sensors if s.name == "io_uring")
    bpf = collector.program.bpf
    sensor.unload(bpf)
    try:
        # IOSQE_ASYNC: the open runs in an io-wq worker, where opening a FIFO for reading waits for a writer
        proc = subprocess.Popen([uring_ops, f"openat,{fifo},{os.O_RDONLY}"], stdout=subprocess.PIPE,
                                env=dict(os.environ, URING_ASYNC="1"))
        time.sleep(0.5)
        assert proc.poll() is None, "the open did not wait for a writer"
    finally:
        sensor.load(bpf)

    def act():
        os.close(os.open(fifo, os.O_WRONLY))  # the worker's open completes now, with the sensor attached
        return proc.communicate(timeout=10)

    events = capture(act, children=True)
    fd = int(capture.result[0].split()[1])
    got = uring(events, os.fsencode(fifo))
    assert [(e.type_name, e.syscall, e.retval) for e in got] == [("open", "io_uring:openat", fd)], events
    assert got[0].attrs.get("uring") == "completion-only"
    assert got[0].flags & os.O_ACCMODE == os.O_RDONLY and got[0].file.ino == os.stat(fifo).st_ino


def test_path_operations(capture, uring_ops, tmp_path):
    d = tmp_path.resolve()
    (d / "a").write_bytes(b"x")
    (d / "e").write_bytes(b"")
    ino = os.stat(d / "a").st_ino
    results, events = run(capture, uring_ops, f"mkdirat,{d}/d,0750", f"renameat,{d}/a,{d}/d/b",
                          f"linkat,{d}/d/b,{d}/c", f"symlinkat,../c,{d}/d/s", f"unlinkat,{d}/e", f"unlinkat,{d}/nope",
                          f"unlinkat,{d}/d,0x200")
    assert results == [0, 0, 0, 0, 0, -errno.ENOENT, -errno.ENOTEMPTY]
    b = lambda p: os.fsencode(d / p)  # noqa: E731
    got = [(e.type_name, e.syscall, e.retval, e.file.path, e.target.path if e.target else None) for e in uring(events)]
    assert got == [
        ("mkdir", "io_uring:mkdirat", 0, b("d"), None),
        ("rename", "io_uring:renameat", 0, b("a"), b("d/b")),
        ("link", "io_uring:linkat", 0, b("d/b"), b("c")),
        ("symlink", "io_uring:symlinkat", 0, b("d/s"), b"../c"),  # the target as written
        ("unlink", "io_uring:unlinkat", 0, b("e"), None),
        ("unlink", "io_uring:unlinkat", -errno.ENOENT, b("nope"), None),
        ("rmdir", "io_uring:unlinkat", -errno.ENOTEMPTY, b("d"), None),
    ]
    mkdir, rename, link, symlink, unlink, _, rmdir = uring(events)
    assert mkdir.mode == 0o750 and mkdir.file.ino == os.stat(d / "d").st_ino
    assert rename.file.ino == rename.target.ino == ino  # the moved inode, read at its destination
    assert link.file.ino == link.target.ino == ino and link.target.nlink == 2
    assert symlink.file.ino == os.lstat(d / "d/s").st_ino
    assert rmdir.flags == 0x200 and rmdir.file.ino == os.stat(d / "d").st_ino  # refused: it still exists


def test_names_rewritten_while_a_request_waits_are_reported_as_the_kernel_acted_on_them(capture, uring_ops,
                                                                                        tmp_path):
    """io_uring lets a caller reuse its memory as soon as a request is submitted: the kernel acts on the copies
    it made then. A request held behind a linked timeout while the caller rewrites its names (the driver's
    decoy step: the last byte becomes 'Z') must be reported with the names the kernel used."""
    d = tmp_path.resolve()
    (d / "a").write_bytes(b"x")
    results, events = run(capture, uring_ops, "decoy,300", f"renameat,{d}/a,{d}/b", "decoy,300",
                          f"openat,{d}/missing,0", "decoy,300", f"mkdirat,{d}/m,0700")
    assert results == [0, 0, 0, -errno.ENOENT, 0, 0]  # decoy steps print 0
    assert (d / "b").exists() and (d / "m").is_dir() and not (d / "Z").exists()  # the kernel's names were used
    got = [(e.type_name, e.retval, e.file.path, e.target.path if e.target else None) for e in uring(events)]
    assert got == [("rename", 0, os.fsencode(d / "a"), os.fsencode(d / "b")),
                   ("open", -errno.ENOENT, os.fsencode(d / "missing"), None),
                   ("mkdir", 0, os.fsencode(d / "m"), None)]


@pytest.mark.parametrize("mode", ["URING_SQPOLL", "URING_ASYNC"])
def test_sqpoll_thread_and_io_wq_workers(capture, uring_ops, tmp_path, mode):
    """Submitted by the kernel's SQ polling thread (no syscall at all), or run by io-wq worker threads:
    the events still belong to the process, with true paths and results."""
    d = tmp_path.resolve()
    f = d / "w"
    results, events = run(capture, uring_ops, f"openat,{f},{O_CREAT | O_WRONLY},0600", "write,$0",
                          f"openat,{d}/nope/x,0", env={mode: "1"})
    fd, written, missing = results
    assert fd >= 0 and written == 5 and missing == -errno.ENOENT
    got = [(e.type_name, e.retval, e.file.path) for e in uring(events)]
    assert got == [("create", fd, os.fsencode(f)), ("write", 0, os.fsencode(f)),
                   ("open", -errno.ENOENT, os.fsencode(d / "nope/x"))]
    assert len({e.pid for e in uring(events)}) == 1  # one process, whichever of its threads ran the request


def test_counters(capture, uring_ops, tmp_path):
    f = tmp_path.resolve() / "c"
    before = capture.collector.kernel_counters()
    run(capture, uring_ops, f"openat,{f},{O_CREAT | O_WRONLY},0600", "write,$0", "write,$0", "write,$0")
    after = capture.collector.kernel_counters()
    d_open = {k: after["uring_open"][k] - before["uring_open"][k] for k in R.COUNTER_NAMES}
    d_rw = {k: after["uring_rw"][k] - before["uring_rw"][k] for k in R.COUNTER_NAMES}
    assert d_open["emitted"] >= 1 and d_open["lost"] == 0
    assert d_rw["emitted"] >= 1 and d_rw["discarded"] >= 2  # the repeated writes, dropped in the kernel
    assert d_rw["seen"] == d_rw["filtered"] + d_rw["discarded"] + d_rw["emitted"] + d_rw["lost"]


# ------------------------------------------------------------------------------- in-kernel filtering
# Path operations done through io_uring change the namespace like their syscalls: a rename must end the
# discarders learned below the moved directory, a new symlink (or one renamed or linked to a new name) must
# become a hazard, so path strings through it are not judged lexically in the kernel. The operations run
# through the driver; the probes are the test's own syscalls.
MODES = [None, "URING_ASYNC", "URING_SQPOLL"]  # the submitter, io-wq workers, the SQ polling thread


def placed(filtering) -> bool:
    """No hazard was given up on: with PS_HAZARDS_FULL set every path string would reach userspace, and the
    tests below would pass without the hazards they are about."""
    return filtering.collector.program.bpf[b"pstate"][ctypes.c_int(PS_HAZARDS_FULL)].value == 0


def uring_do(uring_ops, *steps, cwd=None, mode=None) -> list[int]:
    """Run the driver outside any capture; its results in step order."""
    out = subprocess.run([uring_ops, *steps], capture_output=True, check=True, cwd=cwd,
                         env=dict(os.environ, **({mode: "1"} if mode else {})))
    return [int(v) for v in out.stdout.decode().split()[1::2]]


@pytest.mark.parametrize("mode", MODES)
def test_an_io_uring_rename_of_an_ancestor_invalidates_kernel_discarders(filtering, capture, uring_ops, d, mode):
    learn_a_b_plain(filtering, capture, d)
    # b/ and plain/ keep their dentries, parents and names: only the epoch says their paths changed
    assert uring_do(uring_ops, f"renameat,{d}/a,{d}/watched/a", mode=mode) == [0]
    moved = d / "watched" / "a" / "b" / "plain"
    events = under(capture(lambda: os.close(os.open(moved / "f0", os.O_RDONLY))), "open", d)
    assert [e.file.path for e in events] == [b(moved / "f0")]


@pytest.mark.parametrize("mode", MODES)
def test_path_strings_through_io_uring_symlinks_reach_userspace(filtering, capture, uring_ops, d, mode):
    (d / "watched").mkdir()
    (d / "other").mkdir()
    for i in range(4):
        (d / "watched" / f"f{i}").write_bytes(b"")
    (d / "other" / "o").write_bytes(b"")
    filtering.use(f'rules:\n  - id: w\n    expression: unlink.file.path =~ "{d}/watched/**" || '
                  f'open.file.path =~ "{d}/watched/**"\n')
    # an absolute link path, and one relative to the cwd the completing thread shares with the submitter
    assert uring_do(uring_ops, f"symlinkat,{d}/watched,{d}/lnk", f"symlinkat,{d}/watched,rel", cwd=d,
                    mode=mode) == [0, 0]

    def act():
        unlink_str(d / "lnk" / "f0")
        unlink_str(d / "rel" / "f1")
        with pytest.raises(FileNotFoundError):
            os.open(d / "lnk" / "nosuch", os.O_RDONLY)  # a failed open: a path string too
        unlink_str(d / "watched" / "f2")  # plain and approved
        unlink_str(d / "other" / "o")  # plain and not: filtered in the kernel

    events = [e for e in capture(act) if e.type_name in ("unlink", "open") and e.file.path.startswith(b(d))]
    got = [(e.type_name, e.file.path, bool(e.hdr[1] & HF_UNSURE)) for e in events]
    assert got == [("unlink", b(d / "watched/f0"), True), ("unlink", b(d / "watched/f1"), True),
                   ("open", b(d / "watched/nosuch"), True), ("unlink", b(d / "watched/f2"), False)]
    assert placed(filtering)


def test_a_symlink_renamed_through_io_uring_under_rewritten_names_keeps_its_hazard(filtering, capture, uring_ops, d):
    """The hazard bookkeeping reads the names the kernel used too: rewriting them while the rename waits
    must not leave the symlink's new name unrecorded (its paths would then be judged lexically and dropped)."""
    (d / "watched").mkdir()
    (d / "watched" / "f0").write_bytes(b"")
    filtering.use(f'rules:\n  - id: w\n    expression: unlink.file.path =~ "{d}/watched/**"\n')
    os.symlink(d / "watched", d / "l0")
    assert uring_do(uring_ops, "decoy,300", f"renameat,{d}/l0,{d}/l1") == [0, 0]
    assert os.readlink(d / "l1") == str(d / "watched")

    def act():
        unlink_str(d / "l1" / "f0")

    got = [(e.file.path, bool(e.hdr[1] & HF_UNSURE)) for e in under(capture(act), "unlink", d)]
    assert got == [(b(d / "watched/f0"), True)]
    assert placed(filtering)


@pytest.mark.parametrize("mode", [None, "URING_ASYNC"])
def test_a_symlink_renamed_or_linked_through_io_uring_keeps_its_hazard(filtering, capture, uring_ops, d, mode):
    (d / "watched").mkdir()
    (d / "dir").mkdir()
    for i in range(4):
        (d / "watched" / f"f{i}").write_bytes(b"")
    filtering.use(f'rules:\n  - id: w\n    expression: unlink.file.path =~ "{d}/watched/**"\n')
    os.symlink(d / "watched", d / "l0")  # recorded by the syscall hooks: hazards where they are now
    os.symlink(d / "watched", d / "dir" / "l")
    os.symlink(d / "watched", d / "k0")
    # linkat without AT_SYMLINK_FOLLOW: a second name of the symlink itself
    assert uring_do(uring_ops, f"renameat,{d}/l0,{d}/l1", f"renameat,{d}/dir,{d}/dir2", f"linkat,{d}/k0,{d}/k1",
                    mode=mode) == [0, 0, 0]

    def act():
        unlink_str(d / "l1" / "f0")
        unlink_str(d / "dir2" / "l" / "f1")  # a directory holding one, renamed
        unlink_str(d / "k1" / "f2")
        unlink_str(d / "watched" / "f3")

    got = [(e.file.path, bool(e.hdr[1] & HF_UNSURE)) for e in under(capture(act), "unlink", d)]
    assert got == [(b(d / f"watched/f{i}"), i < 3) for i in range(4)]
    assert placed(filtering)


def test_an_io_uring_rename_exchange_carries_hazards_both_ways(filtering, capture, uring_ops, d):
    """RENAME_EXCHANGE swaps two names: a symlink at the destination is at the source afterwards."""
    (d / "watched").mkdir()
    (d / "plain").mkdir()
    for i in range(2):
        (d / "watched" / f"f{i}").write_bytes(b"")
    filtering.use(f'rules:\n  - id: w\n    expression: unlink.file.path =~ "{d}/watched/**"\n')
    os.symlink(d / "watched", d / "s")  # a hazard; plain/ is not
    assert uring_do(uring_ops, f"renameat,{d}/plain,{d}/s,2") == [0]  # plain/ -> s, s -> plain
    assert os.path.islink(d / "plain")
    got = [(e.file.path, bool(e.hdr[1] & HF_UNSURE))
           for e in under(capture(lambda: unlink_str(d / "plain" / "f0")), "unlink", d)]
    assert got == [(b(d / "watched/f0"), True)]
    assert placed(filtering)


def test_io_uring_path_operations_that_post_no_completion_are_judged_at_submission(filtering, capture, uring_ops,
                                                                                    d):
    """IOSQE_CQE_SKIP_SUCCESS: a success fires no io_uring_complete. The epoch and the hazards are kept at
    submission instead, assuming the worst."""
    leaf = d / "a" / "b" / "plain"
    leaf.mkdir(parents=True)
    (d / "watched").mkdir()
    for i in range(20):
        (leaf / f"f{i}").write_bytes(b"")
    for i in range(2):
        (d / "watched" / f"f{i}").write_bytes(b"")
    filtering.use(f'rules:\n  - id: w\n    expression: open.file.path =~ "{d}/watched/**" || '
                  f'unlink.file.path =~ "{d}/watched/**"\n')
    before = filtering.counters()
    capture(lambda: [os.close(os.open(leaf / f"f{i}", os.O_RDONLY)) for i in range(20)])
    assert filtering.delta(filtering.counters(), before)["open"]["discarded"] >= 15  # plain/ learned
    os.symlink(d / "watched", d / "l0")
    no_cqe = 1 << 30
    assert uring_do(uring_ops, f"renameat,{d}/a,{d}/watched/a", f"symlinkat,{d}/watched,{d}/lnk",
                    f"renameat,{d}/l0,{d}/l1", mode="URING_SKIP") == [no_cqe] * 3
    assert os.path.islink(d / "lnk") and os.path.islink(d / "l1") and (d / "watched" / "a").is_dir()
    moved = d / "watched" / "a" / "b" / "plain"

    def act():
        os.close(os.open(moved / "f0", os.O_RDONLY))
        unlink_str(d / "lnk" / "f0")
        unlink_str(d / "l1" / "f1")

    events = [e for e in capture(act) if e.type_name in ("open", "unlink") and e.file.path.startswith(b(d))]
    assert [(e.type_name, e.file.path) for e in events] == [
        ("open", b(moved / "f0")), ("unlink", b(d / "watched/f0")), ("unlink", b(d / "watched/f1"))]
    assert placed(filtering)


def test_a_lexical_discarder_is_stale_once_an_io_uring_symlink_appears_in_its_directory(filtering, capture,
                                                                                          uring_ops, d):
    _chmod_of_watched_f(filtering, d)
    before = filtering.counters()
    capture(lambda: [os.chmod(d / "other" / "x", 0o600) for _ in range(3)])  # filtered, then discarded
    assert filtering.delta(filtering.counters(), before)["chmod"]["discarded"] >= 2  # other/ learned
    assert uring_do(uring_ops, f"symlinkat,{d}/watched/f,{d}/other/lnk") == [0]
    events = under(capture(lambda: os.chmod(d / "other" / "lnk", 0o640)), "chmod", d)  # follows the link
    assert [(e.file.path, bool(e.hdr[1] & HF_UNSURE)) for e in events] == [(b(d / "watched/f"), True)]
    assert placed(filtering)


def test_io_uring_removals_bump_the_removal_epoch(filtering, uring_ops, d):
    """Like unlink(2) and rmdir(2): a file's or directory's dentry and inode may come back as another (the
    discarders of filesystems without inode generations end there). (Other processes' removals bump it
    too: the count is a lower bound.)"""
    pstate = filtering.collector.program.bpf[b"pstate"]
    steps = [f"mkdirat,{d}/x{i},0700" for i in range(30)] + [f"unlinkat,{d}/x{i},0x200" for i in range(30)]
    (d / "f").write_bytes(b"")
    steps.append(f"unlinkat,{d}/f")
    before = pstate[ctypes.c_int(PS_REPOCH)].value
    assert uring_do(uring_ops, *steps) == [0] * 61
    assert pstate[ctypes.c_int(PS_REPOCH)].value - before >= 31
