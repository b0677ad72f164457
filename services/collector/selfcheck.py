"""Start-up self-check: the BTF offsets compiled into the BPF programs must read what /proc says.

The collector opens a file it just created (with a second hard link), a child with four distinct
uids/gids opens it too, and `/bin/sh -c 'exit 3'` runs; then it compares what the kernel records say with /proc and stat(): pid/tid/ppid, uids/gids, login uid,
session, comm, start time, cgroup id, the file's path/dev/inode/nlink/mode/owner, the child's fork,
exe (path and inode), argv and exit status. Any disagreement means some offset is wrong for this kernel,
and the collector refuses to start rather than publish plausible-looking garbage.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time

from fimstream.collector import records as R
from fimstream.collector.event import (H_AUID, H_CGROUP, H_COMM, H_EGID, H_EUID, H_GID, H_PID, H_PPID, H_SESSION,
                                       H_START, H_TID, H_UID)
from fimstream.collector.proctable import TICK_NS

SHELL = "/bin/sh"


class SelfCheckError(RuntimeError):
    pass


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def _cgroup2_id() -> int | None:
    """Inode of our cgroup v2 directory (what bpf_get_current_cgroup_id returns), if cgroup2 is mounted."""
    mount = None
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup2":
                mount = parts[1]
                break
    if mount is None:
        return None
    for line in _read("/proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            try:
                return os.stat(mount + line[3:]).st_ino
            except OSError:
                return None
    return None


def run_selfcheck(collector, timeout: float = 5.0) -> dict:
    me, tid = os.getpid(), threading.get_native_id()
    captured = []
    previous = collector.on_event
    collector.drain()  # make room: our probes must not meet a full ring buffer
    collector.on_event = captured.append
    try:
        with tempfile.TemporaryDirectory(prefix="fimstream-selfcheck-") as tmp:
            probe = os.path.join(os.path.realpath(tmp), "probe")
            with open(probe, "wb") as f:
                f.write(b"fimstream")
            os.link(probe, probe + ".link")
            os.chmod(tmp, 0o755)
            os.chmod(probe, 0o644)
            st = os.stat(probe)
            os.close(os.open(probe, os.O_RDONLY))
            child = subprocess.Popen([SHELL, "-c", "exit 3"])
            child.wait()
            creds_pid = _open_with_distinct_credentials(probe)
            deadline = time.monotonic() + timeout
            wanted = None
            while time.monotonic() < deadline:
                collector.drain()
                wanted = _pick(captured, me, tid, probe.encode(), child.pid, creds_pid)
                if all(wanted.values()):
                    break
                time.sleep(0.01)
    finally:
        collector.on_event = previous

    missing = [name for name, ev in wanted.items() if ev is None]
    if missing:
        raise SelfCheckError(
            f"BPF self-check: no {', '.join(missing)} event within {timeout:.0f}s after generating them; "
            "the sensors are not seeing syscalls (tracepoints not firing, or offsets so wrong that records "
            "are unrecognisable). Refusing to start.")
    problems = _compare(wanted, me, tid, st, probe.encode(), child.pid, collector)
    if problems:
        raise SelfCheckError(
            "BPF self-check failed: struct offsets read from BTF do not match what this kernel reports, "
            "refusing to start:\n  " + "\n  ".join(problems))
    return {name: ev.hdr[H_PID] for name, ev in wanted.items()}


# distinct values, so that reading the wrong cred member cannot agree by chance (as root all four are 0)
CREDS = {"uid": 65531, "euid": 65532, "gid": 65533, "egid": 65534}


def _open_with_distinct_credentials(probe: str) -> int | None:
    """A child with four different ids opens the probe; None when we cannot change ids (not root)."""
    if os.geteuid() != 0:
        return None
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(CREDS["gid"], CREDS["egid"], CREDS["egid"])
            os.setresuid(CREDS["uid"], CREDS["euid"], CREDS["euid"])
            os.close(os.open(probe, os.O_RDONLY))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _pick(events, me, tid, probe, child_pid, creds_pid) -> dict:
    found = {"open": None, "fork": None, "exec": None, "exit": None}
    if creds_pid is not None:
        found["credentials"] = None
    for ev in events:
        name = ev.type_name
        if name == "open" and ev.file is not None and ev.file.path == probe and creds_pid is not None \
                and ev.hdr[H_PID] == creds_pid:
            found["credentials"] = ev
        elif name == "open" and ev.hdr[H_TID] == tid and ev.file is not None and ev.file.path == probe:
            found["open"] = ev
        elif name == "fork" and ev.hdr[H_PID] == me and ev.child_pid == child_pid:
            found["fork"] = ev
        elif name in ("exec", "exit") and ev.hdr[H_PID] == child_pid and ev.retval == 0:
            found[name] = ev
    return found


def _compare(found: dict, me: int, tid: int, st: os.stat_result, probe: bytes, child_pid: int, collector) -> list[str]:
    problems = []

    def check(what: str, kernel, expected) -> None:
        if kernel != expected:
            problems.append(f"{what}: kernel record says {kernel!r}, /proc and stat() say {expected!r}")

    ev = found["open"]
    hdr = ev.hdr
    ruid, euid, _ = os.getresuid()
    rgid, egid, _ = os.getresgid()
    check("pid", hdr[H_PID], me)
    check("tid", hdr[H_TID], tid)
    check("ppid (task_struct.real_parent, .tgid)", hdr[H_PPID], os.getppid())
    check("uid (cred.uid)", hdr[H_UID], ruid)
    check("euid (cred.euid)", hdr[H_EUID], euid)
    check("gid (cred.gid)", hdr[H_GID], rgid)
    check("egid (cred.egid)", hdr[H_EGID], egid)
    if collector.program.offsets.get("O_TASK_LOGINUID", -1) >= 0:
        check("loginuid (task_struct.loginuid)", hdr[H_AUID], int(_read("/proc/self/loginuid")))
        check("sessionid (task_struct.sessionid)", hdr[H_SESSION], int(_read("/proc/self/sessionid")))
    check("comm", hdr[H_COMM].split(b"\0", 1)[0].decode(errors="replace"), _read(f"/proc/self/task/{tid}/comm"))
    ticks = int(_read("/proc/self/stat").rsplit(")", 1)[1].split()[19])
    if abs(hdr[H_START] // TICK_NS - ticks) > 1:
        problems.append(f"start time (task_struct.start_boottime): kernel record says {hdr[H_START]} ns, "
                        f"/proc/self/stat says {ticks} ticks")
    cg = _cgroup2_id()
    if cg is not None:
        check("cgroup id", hdr[H_CGROUP], cg)
    f = ev.file
    check("open path (file.f_path, dentry.d_name/d_parent, mount)", f.path, probe)
    check("inode (inode.i_ino)", f.ino, st.st_ino)
    check("device (super_block.s_dev)", f.dev, st.st_dev)
    check("link count (inode.i_nlink)", f.nlink, st.st_nlink)
    check("mode (inode.i_mode)", f.mode, st.st_mode)
    check("owner (inode.i_uid/i_gid)", (f.uid, f.gid), (st.st_uid, st.st_gid))
    if f.flags:
        problems.append(f"open path flags: {f.flags} (expected none for a plain file)")

    if "credentials" in found:
        c = found["credentials"].hdr
        check("uid, euid, gid, egid (cred.uid/euid/gid/egid)", (c[H_UID], c[H_EUID], c[H_GID], c[H_EGID]),
              (CREDS["uid"], CREDS["euid"], CREDS["gid"], CREDS["egid"]))
    check("fork child pid", found["fork"].child_pid, child_pid)
    ex = found["exec"]
    shell = os.path.realpath(SHELL).encode()
    sst = os.stat(shell)
    check("exec ppid", ex.hdr[H_PPID], me)
    check("exe (mm_struct.exe_file)", ex.exec.exe, shell)
    check("exe inode", (ex.exec.exe_ino, ex.exec.exe_dev), (sst.st_ino, sst.st_dev))
    check("argv (mm_struct.arg_start/arg_end)", ex.exec.args, [SHELL.encode(), b"-c", b"exit 3"])
    check("exit status (task_struct.exit_code)", found["exit"].exit_code, 3 << 8)
    return problems
