"""What exec events carry beyond the path: the credential change of set-user-ID/set-group-ID and
file-capability binaries, the executed file's mtime/ctime, the overlayfs upper-layer flag (container
drift), memfd and deleted files, and attrs["boot_ns"] for process.age. Real execs."""
from __future__ import annotations

import ctypes
import faulthandler
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from fimstream.collector import records as R
from fimstream.collector.encoder import RawEncoder
from fimstream.rules.fields import FIELDS
from fimstream.schemas.codec import Codecs

from .conftest import root_only, syscall

pytestmark = root_only

TRUE = os.path.realpath("/bin/true")
CAP_NET_RAW = 13


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))


@pytest.fixture
def public_dir():
    """A directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(dir="/var/tmp", prefix="fimstream-exec-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_child(fn):
    def act():
        pid = os.fork()
        if pid == 0:
            try:
                fn()
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
        return pid
    return act


def as_user_exec(path, uid=1000, gid=1000):
    def child():
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.execv(path, [path])
    return child


def the_exec(capture, events):
    found = [e for e in events if e.pid == capture.result and e.type_name == "exec"]
    assert len(found) == 1, found
    return found[0]


def test_setuid_and_setgid_binary_exec_carries_the_credential_change(capture, public_dir):
    exe = os.path.join(public_dir, "suid-true")
    shutil.copy(TRUE, exe)
    os.chown(exe, 0, 0)
    os.chmod(exe, 0o6755)
    ev = the_exec(capture, capture(run_child(as_user_exec(exe)), children=True))
    assert (ev.retval, ev.file.path) == (0, os.fsencode(exe))
    c = ev.cred
    assert (c.old_uid, c.old_euid, c.old_gid, c.old_egid) == (1000, 1000, 1000, 1000)
    assert (c.new_uid, c.new_euid, c.new_gid, c.new_egid) == (1000, 0, 1000, 0)
    assert (c.old_caps, c.new_caps) == (0, _cap_eff())  # euid 0: root's effective set
    assert (ev.hdr[10], ev.hdr[12]) == (1000, 0)  # the header is the process after the exec
    # the rule fields that read it
    rec = encoded(capture, ev)
    assert FIELDS["exec.setuid"].read(rec) and FIELDS["exec.setgid"].read(rec)
    assert FIELDS["exec.caps_gained"].read(rec) == _cap_eff()


def test_exec_from_a_thread_is_compared_with_that_threads_credentials(capture, public_dir):
    """A non-leader thread's exec takes the leader's pid; the credentials before it are that thread's own
    (here changed by a raw setresuid in that thread alone), not the leader's."""
    exe = os.path.join(public_dir, "suid-true-t")
    shutil.copy(TRUE, exe)
    os.chown(exe, 0, 0)
    os.chmod(exe, 0o4755)

    def child():
        def other():
            assert syscall(117, ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(1000), ctypes.c_uint(0xFFFFFFFF)) == 0
            os.execv(exe, [exe])
        threading.Thread(target=other).start()
        threading.Event().wait(10)  # the exec ends this thread

    ev = the_exec(capture, capture(run_child(child), children=True))
    c = ev.cred
    assert ev.retval == 0 and c is not None, "no credential change seen: compared with the leader's"
    assert (c.old_uid, c.old_euid, c.new_uid, c.new_euid) == (0, 1000, 0, 0)


def test_an_exec_the_kernel_starts_is_named_kernel_execve(collector, tmp_path):
    """The core dump pipe helper is started by the kernel (a usermode helper, child of kthreadd): its exec
    is no execve(2), although the saved syscall number says __NR_execve after any ELF load on x86_64."""
    helper = tmp_path.resolve() / "core-helper"
    shutil.copy(TRUE, helper)
    pattern = "/proc/sys/kernel/core_pattern"
    with open(pattern) as f:
        saved = f.read()
    events: list = []
    collector.drain()
    collector.on_event = events.append
    try:
        with open(pattern, "w") as f:
            f.write(f"|{helper}")

        def crash():
            faulthandler.disable()  # pytest's: no traceback dump from the crash
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            os.kill(os.getpid(), signal.SIGSEGV)
        run_child(crash)()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                e.type_name == "exec" and e.file.path == os.fsencode(helper) for e in events):
            collector.drain()
            time.sleep(0.05)
    finally:
        with open(pattern, "w") as f:
            f.write(saved)
        collector.on_event = lambda ev: None
    execs = [e for e in events if e.type_name == "exec" and e.file.path == os.fsencode(helper)]
    assert [e.syscall for e in execs] == ["kernel_execve"]


def test_file_capabilities_gained_across_exec(capture, public_dir):
    exe = os.path.join(public_dir, "cap-true")
    shutil.copy(TRUE, exe)
    os.chmod(exe, 0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", exe], check=True)
    ev = the_exec(capture, capture(run_child(as_user_exec(exe)), children=True))
    c = ev.cred
    assert (c.old_euid, c.new_euid, c.old_caps, c.new_caps) == (1000, 1000, 0, 1 << CAP_NET_RAW)
    rec = encoded(capture, ev)
    assert not FIELDS["exec.setuid"].read(rec) and FIELDS["exec.caps_gained"].read(rec) == 1 << CAP_NET_RAW


def test_exec_carries_the_file_times_and_boot_ns_for_process_age(capture, tmp_path):
    exe = str(tmp_path / "fresh")
    shutil.copy(TRUE, exe)
    os.utime(exe, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))  # an old mtime; ctime is now
    st = os.stat(exe)
    t0 = time.time_ns()
    ev = the_exec(capture, capture(run_child(lambda: os.execv(exe, [exe])), children=True))
    t1 = time.time_ns()
    assert ev.cred is None  # root stays root: nothing changed across this exec
    assert (ev.file.mtime_ns, ev.file.ctime_ns) == (1_600_000_000_123_456_789, st.st_ctime_ns)
    rec = encoded(capture, ev)
    assert rec["file"]["mtime_ns"] == 1_600_000_000_123_456_789 and rec["file"]["ctime_ns"] == st.st_ctime_ns
    assert 0 <= FIELDS["exec.file.change_age"].read(rec) < t1 - st.st_ctime_ns + 10**9
    assert FIELDS["exec.file.modify_age"].read(rec) > 10**9 * 3600 * 24 * 365
    assert rec["attrs"]["boot_ns"] == str(capture.collector.boot_offset_ns)
    # process.age: the child was forked between t0 and t1, so its age at the exec lies in between
    assert 0 <= FIELDS["process.age"].read(rec) <= t1 - t0
    # the encoder's file cache keeps changed times apart
    os.utime(exe, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    ev2 = the_exec(capture, capture(run_child(lambda: os.execv(exe, [exe])), children=True))
    assert encoded(capture, ev2)["file"]["mtime_ns"] == 1_700_000_000_000_000_000


def test_memfd_and_deleted_files(capture, tmp_path):
    with open(TRUE, "rb") as f:
        image = f.read()

    def from_memfd():
        fd = os.memfd_create("payload", 0)
        os.write(fd, image)
        os.execve(fd, ["payload"], {})  # fexecve: execveat(fd, "", AT_EMPTY_PATH)

    gone = str(tmp_path / "gone")
    shutil.copy(TRUE, gone)

    def deleted():
        fd = os.open(gone, os.O_RDONLY)
        os.unlink(gone)
        os.execve(fd, ["gone"], {})

    memfd = the_exec(capture, capture(run_child(from_memfd), children=True))
    assert (memfd.syscall, memfd.file.path) == ("execveat", b"/memfd:payload")
    assert memfd.file.flags & R.PF_DELETED and memfd.file.flags & R.PF_OUTSIDE_ROOT
    rec = encoded(capture, memfd)
    assert FIELDS["exec.file.deleted"].read(rec)
    dead = the_exec(capture, capture(run_child(deleted), children=True))
    assert (dead.file.path, dead.file.flags) == (os.fsencode(gone), R.PF_DELETED)


def test_overlayfs_upper_layer_flag(capture, tmp_path):
    d = tmp_path.resolve()
    for name in ("lower", "upper", "work", "merged"):
        (d / name).mkdir()
    for name in ("image-bin", "image-bin-2"):
        shutil.copy(TRUE, d / "lower" / name)
    try:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work", str(d / "merged")],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"overlayfs unavailable: {e.stderr.decode().strip()}")
    try:
        merged = d / "merged"
        shutil.copy(TRUE, merged / "dropped")  # written after the "image" was made: upper layer
        os.chmod(merged / "image-bin-2", 0o700)  # a metadata change copies it up
        got = {}
        for name in ("image-bin", "dropped", "image-bin-2"):
            exe = str(merged / name)
            got[name] = the_exec(capture, capture(run_child(lambda: os.execv(exe, [exe])), children=True))
    finally:
        subprocess.run(["umount", "-l", str(d / "merged")], check=True)
    assert {n: e.attrs.get("upper_layer") for n, e in got.items()} == {
        "image-bin": "0", "dropped": "1", "image-bin-2": "1"}
    assert got["dropped"].file.path == os.fsencode(d / "merged" / "dropped")
    assert FIELDS["exec.file.upper_layer"].read(encoded(capture, got["dropped"]))
    # not on overlayfs at all: no flag
    ev = the_exec(capture, capture(run_child(lambda: os.execv(TRUE, [TRUE])), children=True))
    assert "upper_layer" not in ev.attrs


def encoded(capture, ev) -> dict:
    """The RawEvent dict the pipeline would carry (so catalog fields read what rules will read)."""
    codecs = Codecs()
    enc = RawEncoder("h", capture.collector.procs, capture.collector.boot_offset_ns)
    body = enc.encode(ev, enc.process_for(ev)[1])
    return codecs.raw.decode_batch(codecs.raw.frame_encoded([body]))[0]
