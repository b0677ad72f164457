"""The hand-written RawEvent encoder produces exactly what fastavro would: byte for byte, and decodable to
the intended records -- for real kernel events of every kind and for the awkward values (non-UTF-8
comm and paths, negative results, unset owners, large inodes, attrs, ancestors)."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from fimstream.collector import records as R
from fimstream.collector.encoder import RawEncoder, enc_long
from fimstream.collector.event import EVENT_TYPES, CredInfo, Event, ExecInfo, FileRef, NetInfo
from fimstream.collector.proctable import ProcInfo, ProcTable
from fimstream.schemas.codec import Codecs, EventIds, avro_long

from .conftest import root_only

HOST = "node-1.example"
OFFSET = 1_700_000_000_000_000_000


def intended(ev: Event, procs: ProcTable, event_id: bytes) -> dict:
    """The RawEvent dict the encoder is meant to produce, built field by field from the schema's view."""
    hdr = ev.hdr
    info = procs.get(hdr[7], hdr)
    text = lambda raw: raw.decode("utf-8", "backslashreplace")
    return {
        "event_id": event_id, "time_ns": hdr[3] + OFFSET, "event_type": ev.type_name, "syscall": ev.syscall,
        "host": HOST, "retval": ev.retval,
        "process": {
            "pid": hdr[7], "tid": hdr[8], "ppid": hdr[9], "start_time_ns": hdr[5], "uid": hdr[10], "gid": hdr[11],
            "euid": hdr[12], "egid": hdr[13], "auid": hdr[14], "session_id": hdr[15],
            "comm": text(hdr[16].split(b"\0", 1)[0]), "exe": info.exe, "exe_ino": info.exe_ino,
            "exe_dev": info.exe_dev, "args": info.args, "args_truncated": info.args_truncated, "cgroup_id": hdr[6],
            "cgroup": info.cgroup,
            "ancestors": [{"pid": a.pid, "comm": text(a.comm), "exe": a.exe} for a in procs.ancestors(info)]},
        "file": ev.file.to_record() if ev.file else None,
        "target": ev.target.to_record() if ev.target else None,
        "flags": ev.flags, "mode": ev.mode, "owner_uid": ev.owner_uid, "owner_gid": ev.owner_gid,
        "net": ev.net.to_record() if ev.net else None, "cred": ev.cred.to_record() if ev.cred else None,
        "exit_code": ev.exit_code, "attrs": ev.attrs or {},
    }


def check(events: list[Event], procs: ProcTable) -> None:
    codecs = Codecs()
    prefix = b"\x01" * 8
    encoder = RawEncoder(HOST, procs, OFFSET, EventIds(prefix))
    bodies, expected = [], []
    for seq, ev in enumerate(events, 1):
        want = intended(ev, procs, prefix + seq.to_bytes(8, "big"))
        _, block = encoder.process_for(ev)
        body = encoder.encode(ev, block)
        assert body == codecs.raw.encode_record(want), f"bytes differ from fastavro's for {ev}"
        bodies.append(body)
        expected.append(want)
    assert codecs.raw.decode_batch(codecs.raw.frame_encoded(bodies)) == expected


def test_table_driven_longs_match_the_codec():
    edges = [0, 1, -1, 63, -64, 64, 8191, -8192, 8192, -8193, 2**31, -2**31, 2**63 - 1, -2**63]
    for bits in (13, 14, 27, 28, 41, 42, 55, 56, 62):
        edges += [2**bits - 1, 2**bits, 2**bits + 1, -2**bits, -2**bits - 1]
    rng = random.Random(7)
    edges += [rng.randrange(-2**63, 2**63) for _ in range(20000)]
    edges += [1_763_700_000_000_000_000 + rng.randrange(10**12) for _ in range(5000)]  # timestamps
    for n in edges:
        assert enc_long(n) == avro_long(n), n


def test_event_types_match_the_schema():
    schema = Codecs().raw.schema
    enum = next(f for f in schema["fields"] if f["name"] == "event_type")["type"]
    assert tuple(enum["symbols"]) == EVENT_TYPES


def _synthetic_header(pid: int, comm: bytes, **over) -> tuple:
    values = dict(kind=R.RK_OPEN, hflags=0, reserved=0, ktime=123_456_789, retval=-13, start=2**40 + 7,
                  cgroup=2**33, pid=pid, tid=pid + 1, ppid=pid - 1, uid=0, gid=5, euid=4294967294, egid=7,
                  auid=4294967295, session=4294967295, comm=comm.ljust(16, b"\0"))
    values.update(over)
    return tuple(values.values())


def test_awkward_values():
    procs = ProcTable()
    parent = ProcInfo(900_001, 1, 5)
    parent.comm, parent.exe = b"p\xffrent", b"/bin/\xfe"
    child = ProcInfo(900_002, 900_001, 2**40 + 7)
    child.exe, child.exe_ino, child.exe_dev = b"/opt/\xc3\x28bin", 2**45, 0xFE00001
    child.args, child.args_truncated, child.cgroup = [b"-x", b"", b"\xff"], True, b"/docker/\xffabc"
    procs.procs.update({parent.pid: parent, child.pid: child})
    hdr = _synthetic_header(child.pid, b"c\xe9\xff")
    ev = Event(R.RK_OPEN, EVENT_TYPES.index("chown"), "fchownat", hdr, b"sig-a")
    ev.file = FileRef(b"/etc/\xff\nname", R.PF_UNRESOLVED | R.PF_DEPTH, 2**32 + 1, 2**50, 3, 0o100644, 0, 4294967294)
    ev.target = FileRef(b"")
    ev.flags, ev.mode, ev.owner_uid, ev.owner_gid = 2**40, 0o7777, -1, 4294967294
    ev.attrs = {"filename": "na\\xffme", "k": ""}
    ev.exit_code = -9
    ev2 = Event(R.RK_EXIT, EVENT_TYPES.index("exit"), "exit", _synthetic_header(child.pid, b"c\xe9\xff", retval=0),
                b"sig-a")
    ev3 = Event(R.RK_CONNECT, EVENT_TYPES.index("connect"), "connect", hdr, b"sig-a")
    ev3.net = NetInfo(10, 6, "fe80::1", 65535, "2001:db8::\u00e9", 0)
    ev4 = Event(R.RK_SETUID, EVENT_TYPES.index("setuid"), "setresuid", hdr, b"sig-a")
    ev4.cred = CredInfo((1000, 1000, 4294967294, 5), (0, 0, 5, 5), 0, (1 << 41) - 1)
    ev5 = Event(R.RK_BIND, EVENT_TYPES.index("bind"), "bind", hdr, b"sig-a")
    ev5.net, ev5.cred = NetInfo(1), CredInfo((0,) * 4, (0,) * 4)
    check([ev, ev2, ev3, ev4, ev5], procs)


@root_only
def test_real_kernel_events_of_every_kind(capture, tmp_path):
    d = tmp_path.resolve()

    def act():
        p = d / "f\xe9"
        with open(p, "w"):
            pass
        os.rename(p, d / "g")
        os.chown(d / "g", -1, 12)
        os.chmod(d / "g", 0o600)
        try:
            os.open(d / "missing", os.O_RDONLY)
        except FileNotFoundError:
            pass
        os.unlink(d / "g")
        subprocess.run(["/bin/sh", "-c", "true"])

    events = capture(act, children=True)
    kinds = {e.type_name for e in events}
    assert {"create", "rename", "chown", "chmod", "open", "unlink", "fork", "exec", "exit"} <= kinds
    check(events, capture.collector.procs)


def test_process_blocks_are_reused_per_thread_context_and_rebuilt_on_exec():
    procs = ProcTable()
    info = ProcInfo(900_010, 1, 99)
    info.exe = b"/bin/a"
    procs.procs[info.pid] = info
    encoder = RawEncoder(HOST, procs, 0)
    hdr = _synthetic_header(info.pid, b"a", start=99)
    sig = bytes(range(68))
    e1 = Event(R.RK_OPEN, 1, "openat", hdr, sig)
    b1 = encoder.process_for(e1)[1]
    assert encoder.process_for(Event(R.RK_OPEN, 1, "openat", hdr, sig))[1] is b1
    assert encoder.stats["process_blocks"] == 1
    # a credential change is a different signature: a new block
    hdr_setuid = _synthetic_header(info.pid, b"a", start=99, euid=0)
    assert encoder.process_for(Event(R.RK_OPEN, 1, "openat", hdr_setuid, sig + b"x"))[1] != b1
    # exec replaces the cache entry, so the old blocks go with it
    procs.on_exec(info.pid, hdr, b"/bin/b", 1, 2, [b"b"], False)
    b3 = encoder.process_for(Event(R.RK_OPEN, 1, "openat", hdr, sig))[1]
    assert b3 != b1 and b"/bin/b" in b3


@root_only
def test_real_network_privilege_and_exec_events(capture, tmp_path):
    """Events with RawEvent.net, .cred, unix paths in attrs, exec file times and a set-user-ID exec."""
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    d = tmp_path.resolve()
    public = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="fimstream-enc-"))  # reachable by uid 1000
    os.chmod(public, 0o755)
    suid = public / "suid-true"
    shutil.copy(os.path.realpath("/bin/true"), suid)
    os.chmod(suid, 0o4755)

    def act():
        srv = socket.socket(socket.AF_INET6)
        srv.bind(("::1", 0))
        srv.listen()
        cli = socket.socket(socket.AF_INET6)
        cli.connect(srv.getsockname()[:2])
        conn, _ = srv.accept()
        u = socket.socket(socket.AF_UNIX)
        u.bind(os.fsencode(d / "s\xe9.sock"))
        for s in (conn, cli, srv, u):
            s.close()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([3])
                os.setresgid(1000, 1000, 1000)
                os.setresuid(1000, 1000, 1000)
                os.execv(suid, [str(suid)])
            finally:
                os._exit(1)
        os.waitpid(pid, 0)

    try:
        events = capture(act, children=True)
    finally:
        shutil.rmtree(public)
    kinds = {e.type_name for e in events}
    assert {"bind", "connect", "accept", "setgroups", "setgid", "setuid", "exec"} <= kinds
    assert any(e.type_name == "exec" and e.cred is not None for e in events)
    check(events, capture.collector.procs)
