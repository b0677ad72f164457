"""One loaded collector per test session (compiling and verifying the programs takes seconds), and a
helper that runs real syscalls and returns the events they produced."""
from __future__ import annotations

import ctypes
import os
import time

import pytest

from fimstream.collector.collector import Collector

ROOT_REASON = "needs root (loads eBPF programs)"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_REASON)


def pytest_collection_modifyitems(config, items):
    """Tests that load eBPF programs also carry the `root` marker (`make test-fast` deselects them)."""
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.path).startswith(here):
            continue
        if any(m.name == "skipif" and m.kwargs.get("reason") == ROOT_REASON for m in item.iter_markers()) \
                or "collector" in getattr(item, "fixturenames", ()) or "capture" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def syscall(nr: int, *args) -> int:
    """Raw syscall through libc (for variants Python's os module does not call). Returns -errno on error."""
    ret = libc.syscall(ctypes.c_long(nr), *args)
    return -ctypes.get_errno() if ret == -1 else ret


class Capture:
    def __init__(self, collector: Collector):
        self.collector = collector

    def __call__(self, action, pids: set[int] | None = None, children: bool = False, settle: float = 0.02):
        """Run action(), then return the events of this process (and, with children, of its children)."""
        c = self.collector
        c.drain()
        events = []
        c.on_event = events.append
        try:
            result = action()
            time.sleep(settle)
            c.drain()
        finally:
            c.on_event = lambda ev: None
        me = os.getpid()
        wanted = pids or {me}
        # the collector's own /proc reads (process cache) happen in this process too: not the test's
        events = [e for e in events if not (e.pid == me and e.file and e.file.path.startswith(b"/proc/"))]
        out = [e for e in events if e.pid in wanted or (children and e.hdr[9] in wanted)]
        if children:  # grandchildren too (sh -c 'x' forks x)
            kids = {e.child_pid for e in out if e.type_name == "fork"}
            while True:
                more = [e for e in events if e not in out and (e.pid in kids or e.hdr[9] in kids)]
                if not more:
                    break
                out += more
                kids |= {e.child_pid for e in more if e.type_name == "fork"}
        self.result = result
        return out


@pytest.fixture(scope="session")
def collector():
    if os.geteuid() != 0:
        pytest.skip("needs root (loads eBPF programs)")
    c = Collector()
    c.start()
    c.selfcheck()
    yield c
    c.close()


@pytest.fixture
def capture(collector) -> Capture:
    return Capture(collector)


def only(events, type_name: str, path: bytes | None = None):
    """The single event of a type (and path), with a readable failure."""
    found = [e for e in events if e.type_name == type_name and (path is None or (e.file and e.file.path == path))]
    assert len(found) == 1, f"expected one {type_name} {path!r}, got {found} among {events}"
    return found[0]


def b(path) -> bytes:
    return os.fsencode(path)


@pytest.fixture
def d(tmp_path):
    """The test's directory with symlinks resolved (/tmp may be one): the path the kernel reports."""
    return tmp_path.resolve()


def under(events, type_name: str, d):
    """Events of one type whose file is under d."""
    return [e for e in events if e.type_name == type_name and e.file and e.file.path.startswith(b(d))]
