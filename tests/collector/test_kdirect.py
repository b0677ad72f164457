"""Direct kernel reads (kdirect.py): this kernel accepts bpf_rdonly_cast in a tracepoint program, the loader
rewrites every marker call, and the probe-read fallback (kernels without the kfunc) reports exactly what
the direct reads report: the same events, paths, inodes and in-kernel verdicts for the same syscalls."""
from __future__ import annotations

import ctypes
import os

import pytest

from fimstream.collector import kdirect
from fimstream.collector.btf import Btf
from fimstream.collector.collector import Collector
from fimstream.rules import load_rules

from .conftest import b, root_only

RULES = os.path.join(os.path.dirname(__file__), "..", "..", "rules")


def marker_calls(bpf) -> int:
    """Calls still naming the marker helper in the compiled module (0 once patched)."""
    from bcc.libbcc import lib

    left = 0
    for i in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, i)
        size = lib.bpf_function_size(bpf.module, name)
        code = bytes((ctypes.c_uint8 * size).from_address(lib.bpf_function_start(bpf.module, name)))
        for pos in range(0, size - 7, 8):
            if code[pos] == kdirect.BPF_CALL and int.from_bytes(code[pos + 4:pos + 8], "little", signed=True) == kdirect.MARKER:
                left += 1
    return left


@root_only
def test_kernel_accepts_the_kfunc_here():
    reads = kdirect.probe(Btf.load())
    assert reads.enabled, reads.reason
    assert reads.defines["KDIRECT"] == 1 and reads.kfunc_id > 0
    assert all(reads.defines[f"BTF_{tag}"] > 0 for tag in kdirect.TYPES)
    # 6.16+ also takes an untyped cast (btf_id 0): the fd table slot is then a plain load too
    assert reads.defines["KVOID"] == 1 and "untyped" in str(reads)


def test_disabled_on_request():
    reads = kdirect.probe(Btf.load(), want=False)
    assert not reads.enabled and reads.defines["KDIRECT"] == 0 and reads.defines["KVOID"] == 0
    assert "direct_reads: false" in str(reads)


@root_only
def test_every_marker_call_is_rewritten(collector):
    assert collector.program.reads.enabled
    assert collector.program.kfunc_calls > 0
    assert marker_calls(collector.program.bpf) == 0


@pytest.fixture(scope="module")
def fallback():
    """A second collector built with probe reads, attached beside the session's direct one."""
    c = Collector(direct_reads=False)
    c.start()
    c.selfcheck()
    assert not c.program.reads.enabled
    yield c
    c.close()


def both(collector, fallback, action):
    """Run action once; the events of this process as each collector saw them."""
    seen = {"direct": [], "fallback": []}
    for c in (collector, fallback):
        c.drain()
    collector.on_event, fallback.on_event = seen["direct"].append, seen["fallback"].append
    try:
        action()
    finally:
        collector.drain()
        fallback.drain()
        collector.on_event = fallback.on_event = lambda ev: None
    me = os.getpid()

    def slot(f):
        return f and tuple(getattr(f, a, None) for a in ("path", "flags", "dev", "ino", "nlink", "mode", "uid", "gid"))

    def key(e):
        return (e.type_name, e.syscall, e.retval, slot(e.file), slot(e.target))

    return {k: [key(e) for e in v if e.pid == me and not (e.file and e.file.path.startswith(b"/proc/"))]
            for k, v in seen.items()}


@root_only
def test_fallback_reports_what_direct_reads_report(collector, fallback, d):
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"x")

    def act():
        old = os.getcwd()
        os.chdir(d)
        try:
            os.close(os.open("sub/f", os.O_RDONLY))                        # relative, fd-based walk
            dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
            os.close(os.open("g", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dfd))  # create via dirfd
            os.close(dfd)
            os.rename("sub", "moved")                                       # renamed parent
            os.close(os.open(d / "moved" / "f", os.O_RDONLY))
            os.chmod("moved/g", 0o640)                                      # path string
            os.unlink("moved/g")
            try:
                os.open("missing", os.O_RDONLY)                             # failed open: the string
            except FileNotFoundError:
                pass
        finally:
            os.chdir(old)

    got = both(collector, fallback, act)
    assert got["direct"] == got["fallback"]
    paths = [k[3][0] for k in got["direct"] if k[3]]
    assert b(d / "moved" / "f") in paths and b(d / "sub" / "g") in paths


@root_only
def test_fallback_filters_in_the_kernel_like_direct_reads(collector, fallback, d):
    """The default pack in both: the same opens of unwatched files are dropped (approvers, discarders)."""
    ruleset = load_rules(RULES)
    for name in ("a", "bb", "id_rsa"):  # id_rsa: a length the pack's name approvers have
        (d / name).write_bytes(b"")
    loaded = []
    try:
        for c in (collector, fallback):
            if c.filter.ruleset is not ruleset:
                c.load_rules(ruleset)
                loaded.append(c)
        before = {id(c): c.kernel_counters()["open"] for c in (collector, fallback)}

        def act():
            for _ in range(20):
                for name in ("a", "bb", "id_rsa"):
                    os.close(os.open(d / name, os.O_RDONLY))

        both(collector, fallback, act)
        deltas = []
        for c in (collector, fallback):
            after = c.kernel_counters()["open"]
            deltas.append({k: after[k] - before[id(c)][k] for k in ("filtered", "discarded", "approved")})
        # a and bb: dropped (the first by the walk, then by the directory's discarder); id_rsa: approved by
        # the name approver of ssh_private_key_access and left to userspace (it is not under .ssh/)
        assert deltas[0]["filtered"] + deltas[0]["discarded"] == 40 and deltas[0]["approved"] == 20, deltas
        assert deltas[0] == deltas[1]
    finally:
        for c in loaded:
            c.filter.unload()
