"""Privilege sensor: each credential, namespace and root change, done for real in a forked child, gives an
event with the kernel's credentials before and after (RawEvent.cred) and what the call asked for."""
from __future__ import annotations

import ctypes
import os
import socket
import threading

from fimstream.collector import records as R, threadsnap

from .conftest import libc, root_only, syscall

pytestmark = root_only

SYS_capset, SYS_setns, SYS_setresuid = 126, 308, 117
KEEP = ctypes.c_uint(0xFFFFFFFF)  # -1 as a uid_t argument: leave unchanged
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWNET = 0x00020000, 0x04000000, 0x40000000
CAP_NET_RAW = 13

def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))


ALL_CAPS = _cap_eff()  # root's effective set here (the machine's bounding set may hold back a few)


def in_child(fn, before=None):
    """Run fn() in a forked child (so the test process keeps its credentials); returns the child's pid.
    With before: the child waits until the parent has run before(child_pid)."""
    def act():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(w)
                os.read(r, 1)
                fn()
            except BaseException:
                code = 1
            os._exit(code)
        os.close(r)
        if before is not None:
            before(pid)
        os.write(w, b"x")
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert status == 0, "the child failed"
        return pid
    return act


def events_of(capture, fn, type_names):
    events = capture(in_child(fn), children=True)
    return [e for e in events if e.pid == capture.result and e.type_name in type_names]


def ids(ev):
    c = ev.cred
    return (c.old_uid, c.old_euid, c.old_gid, c.old_egid), (c.new_uid, c.new_euid, c.new_gid, c.new_egid)


def test_setuid_family_reports_the_kernel_credentials_before_and_after(capture):
    def child():
        os.setresuid(-1, 1000, -1)  # ruid 0, euid 1000, saved 0
        os.setuid(0)  # unprivileged now, but 0 is the saved uid: euid back to 0
        os.setreuid(1000, 1000)  # saved uid follows: root is gone for good
        try:
            os.setuid(0)
        except PermissionError:
            pass
        libc.setfsuid(2000)  # refused (not one of its ids): returns the old fsuid, changes nothing

    events = events_of(capture, child, {"setuid"})
    got = [(e.syscall, e.retval, ids(e)[0][:2], ids(e)[1][:2], e.attrs["requested"]) for e in events]
    assert got == [
        ("setresuid", 0, (0, 0), (0, 1000), "ruid=-1 euid=1000 suid=-1"),
        ("setuid", 0, (0, 1000), (0, 0), "uid=0"),
        ("setreuid", 0, (0, 0), (1000, 1000), "ruid=1000 euid=1000"),
        ("setuid", -1, (1000, 1000), (1000, 1000), "uid=0"),  # EPERM: the attempt is visible
        ("setfsuid", 1000, (1000, 1000), (1000, 1000), "fsuid=2000"),
    ]
    setresuid, _, setreuid, _, setfsuid = events
    assert (setresuid.attrs["old_suid"], setresuid.attrs["suid"]) == ("0", "0")
    assert (setreuid.attrs["old_suid"], setreuid.attrs["suid"]) == ("0", "1000")
    assert (setfsuid.attrs["old_fsuid"], setfsuid.attrs["fsuid"]) == ("1000", "1000")
    # effective capabilities: root's as euid 0, none once the euid is not 0
    assert (setresuid.cred.old_caps, setresuid.cred.new_caps) == (ALL_CAPS, 0)
    assert events[1].cred.new_caps == ALL_CAPS and setreuid.cred.new_caps == 0
    assert all(int(e.attrs["boot_ns"]) == capture.collector.boot_offset_ns for e in events)
    # the header is the process after the call
    assert (setreuid.hdr[10], setreuid.hdr[12]) == (1000, 1000)


def test_setgid_family_and_setgroups(capture):
    def child():
        os.setgroups([5, 7, 4242])
        os.setresgid(100, 200, 300)
        os.setregid(-1, 300)  # euid 0 still: any gid
        os.setgid(50)  # as root: real, effective and saved
        libc.setfsgid(60)

    events = events_of(capture, child, {"setgid", "setgroups"})
    groups, *gid_events = events
    assert (groups.type_name, groups.syscall, groups.retval, groups.attrs["groups"], groups.flags) == (
        "setgroups", "setgroups", 0, "5,7,4242", 3)
    got = [(e.syscall, ids(e)[0][2:], ids(e)[1][2:], e.attrs.get("requested")) for e in gid_events]
    assert got == [
        ("setresgid", (0, 0), (100, 200), "rgid=100 egid=200 sgid=300"),
        ("setregid", (100, 200), (100, 300), "rgid=-1 egid=300"),
        ("setgid", (100, 300), (50, 50), "gid=50"),
        ("setfsgid", (50, 50), (50, 50), "fsgid=60"),
    ]
    assert gid_events[0].attrs["sgid"] == "300" and gid_events[2].attrs["sgid"] == "50"
    assert gid_events[3].attrs["fsgid"] == "60" and gid_events[3].retval == 50  # the old fsgid


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def test_capset_reports_old_and_new_sets(capture):
    def child():
        hdr = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit halves
        data = (CapData * 2)()
        assert syscall(125, ctypes.byref(hdr), data) == 0  # capget
        data[0].effective &= ~(1 << CAP_NET_RAW)
        data[0].permitted &= ~(1 << CAP_NET_RAW)
        assert syscall(SYS_capset, ctypes.byref(hdr), data) == 0
        data[0].effective |= 1 << CAP_NET_RAW  # not permitted any more: EPERM
        assert syscall(SYS_capset, ctypes.byref(hdr), data) == -1

    dropped, refused = events_of(capture, child, {"capset"})
    assert (dropped.syscall, dropped.retval) == ("capset", 0)
    assert (dropped.cred.old_caps, dropped.cred.new_caps) == (ALL_CAPS, ALL_CAPS & ~(1 << CAP_NET_RAW))
    assert dropped.attrs["old_permitted"] == hex(ALL_CAPS)
    assert dropped.attrs["permitted"] == hex(ALL_CAPS & ~(1 << CAP_NET_RAW))
    assert refused.retval == -1 and refused.cred.old_caps == refused.cred.new_caps == dropped.cred.new_caps
    assert "permitted" not in refused.attrs


def test_unshare_and_setns_report_the_namespaces_that_changed(capture):
    def child():
        uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
        assert libc.unshare(CLONE_NEWUTS | CLONE_NEWNS) == 0
        socket.sethostname("fimstream-test")
        assert syscall(SYS_setns, uts, 0) == 0  # back into the first UTS namespace, kind left to the fd
        assert syscall(SYS_setns, uts, CLONE_NEWNET) == -22  # wrong kind for this fd: EINVAL

    before = {k: os.stat(f"/proc/self/ns/{k}").st_ino for k in ("uts", "mnt")}
    unshare, setns, wrong = events_of(capture, child, {"unshare", "setns"})
    assert (unshare.syscall, unshare.retval, unshare.flags) == ("unshare", 0, CLONE_NEWUTS | CLONE_NEWNS)
    assert unshare.attrs["namespaces"] == "mnt,uts"
    assert int(unshare.attrs["uts_ns"]) != before["uts"] and int(unshare.attrs["mnt_ns"]) != before["mnt"]
    # nstype 0: the kind is what actually changed
    assert (setns.syscall, setns.retval, setns.flags, setns.attrs["namespaces"]) == ("setns", 0, CLONE_NEWUTS, "uts")
    assert setns.attrs["uts_ns"] == str(before["uts"])
    assert (wrong.retval, wrong.flags, wrong.attrs["namespaces"]) == (-22, CLONE_NEWNET, "")


def test_chroot_moves_the_process_root_in_the_cache(capture, tmp_path):
    d = tmp_path.resolve()
    jail = d / "jail"
    (jail / "data" / "v1").mkdir(parents=True)
    os.symlink("/data/v1", jail / "current")  # absolute: only meaningful inside the jail
    (jail / "data" / "v1" / "f").write_bytes(b"")

    def child():
        os.chroot(jail)
        os.unlink("/current/f")  # a path string, resolved in userspace after the child is gone
        try:
            os.chroot("/no/such/dir")
        except FileNotFoundError:
            pass

    events = capture(in_child(child), children=True, settle=0.2)
    pid = capture.result
    assert not os.path.exists(f"/proc/{pid}")
    mine = [e for e in events if e.pid == pid and e.syscall in ("chroot", "unlink", "unlinkat")]
    chroot, unlink, failed = mine
    assert (chroot.type_name, chroot.retval, chroot.file.path, chroot.file.flags) == ("unknown", 0, os.fsencode(jail), 0)
    assert chroot.file.ino == os.stat(jail).st_ino
    assert capture.collector.procs.root_of(pid) == os.fsencode(jail)
    # resolved inside the jail, through its absolute symlink, although the process had exited
    assert (unlink.file.path, unlink.file.flags) == (b"/data/v1/f", 0)
    assert failed.retval == -2 and failed.file.path == b"/no/such/dir"


def test_each_thread_is_compared_with_its_own_credentials(capture):
    """Credentials are per thread: a raw setresuid in one thread leaves the others' as they were, and each
    thread's next change is compared with its own state (the kernel's per-thread snapshot)."""
    def child():
        def other():
            assert syscall(SYS_setresuid, KEEP, ctypes.c_uint(1000), KEEP) == 0
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert syscall(SYS_setresuid, KEEP, ctypes.c_uint(2000), KEEP) == 0  # this thread's euid was still 0

    events = events_of(capture, child, {"setuid"})
    assert [(ids(e)[0][1], ids(e)[1][1]) for e in events] == [(0, 1000), (0, 2000)]
    assert all("old_state" not in e.attrs for e in events)


def test_threads_older_than_the_collector_are_seeded_from_proc(capture):
    """A thread the kernel never saw fork has its state read from /proc at start: ids, capabilities and
    namespaces compare with what the kernel reads after the call."""
    table = capture.collector.program.bpf.get_table(b"thread_snaps")
    counts = {}

    def forget_then_seed(pid):
        del table[table.Key(pid)]  # as if the child were older than the collector
        counts.update(threadsnap.seed(capture.collector.program.bpf))

    def change():
        assert libc.unshare(CLONE_NEWUTS) == 0
        os.setresuid(-1, 1000, -1)

    events = capture(in_child(change, before=forget_then_seed), children=True)
    unshare, setresuid = [e for e in events if e.pid == capture.result and e.type_name in ("setuid", "unshare")]
    assert counts["seeded"] >= 1
    assert "old_state" not in setresuid.attrs and "old_state" not in unshare.attrs
    assert ids(setresuid) == ((0, 0, 0, 0), (0, 1000, 0, 0))
    assert (setresuid.cred.old_caps, setresuid.cred.new_caps) == (ALL_CAPS, 0)  # CapEff from /proc
    assert unshare.attrs["namespaces"] == "uts"  # the other seven read from /proc equal the kernel's


def test_a_thread_without_a_snapshot_is_reported_as_such(capture):
    table = capture.collector.program.bpf.get_table(b"thread_snaps")

    def forget(pid):
        del table[table.Key(pid)]

    def change():
        os.setresuid(-1, 1000, -1)
        os.setresuid(-1, 0, -1)

    events = capture(in_child(change, before=forget), children=True)
    first, second = [e for e in events if e.pid == capture.result and e.type_name == "setuid"]
    assert first.attrs["old_state"] == "process_cache"  # the ids the cache knew; no claim about the rest
    assert ids(first)[1][1] == 1000
    assert "old_state" not in second.attrs and ids(second) == ((0, 1000, 0, 0), (0, 0, 0, 0))  # taken after the call


def test_counters_count_the_privilege_kinds(capture):
    before = capture.collector.kernel_counters()
    events = events_of(capture, lambda: (os.setuid(0), os.setgid(0)), {"setuid", "setgid"})
    after = capture.collector.kernel_counters()
    assert len(events) == 2
    for kind in ("setuid", "setgid"):
        delta = {k: after[kind][k] - before[kind][k] for k in R.COUNTER_NAMES}
        assert delta["emitted"] >= 1 and delta["lost"] == 0
        assert delta["seen"] == delta["filtered"] + delta["emitted"] + delta["lost"]
