"""One real collector per session, with the default pack's kernel policy in its maps, behind the live
pipeline harness (harness.py)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import pytest

from fimstream.rules import load_rules

from .harness import RULES_DIR, Pipeline

log = logging.getLogger(__name__)
ROOT_REASON = "needs root (loads eBPF programs, mounts, cgroups)"


def pytest_collection_modifyitems(config, items):
    """Every live test loads eBPF programs: `root` marker (`make test-fast` deselects them)."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here) and "live" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def pack():
    return load_rules(RULES_DIR)


@pytest.fixture(scope="session")
def live(pack) -> Pipeline:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    from fimstream.collector.collector import Collector

    t0 = time.monotonic()
    c = Collector()
    c.start()
    c.selfcheck()
    # the kernel filter compiled from the same rules, as the collector service loads it
    kernel_policy = hasattr(c, "load_rules")
    if kernel_policy:
        c.load_rules(pack)
        c.scan_symlinks()  # path strings judged in the kernel too, not only fd-based events
    log.warning("live pipeline ready in %.1f s (kernel policy %s)", time.monotonic() - t0,
                "loaded" if kernel_policy else "NOT AVAILABLE: the collector has no load_rules yet")
    try:
        yield Pipeline(c, pack, kernel_policy)
    finally:
        c.close()


@pytest.fixture(scope="session")
def tools():
    """A directory for renamed copies of system binaries, outside every watched and staging directory,
    reachable by unprivileged users."""
    d = tempfile.mkdtemp(prefix="fimstream-live-", dir="/run")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path):
    """Host directory for a private namespace's overlay layers (a tmpfs is mounted over it inside)."""
    d = tmp_path / "ns"
    d.mkdir()
    return str(d)


@pytest.fixture(scope="session")
def uring_ops(tools):
    """tests/collector's raw-syscall io_uring driver (file operations that reach no syscall tracepoint)."""
    import subprocess
    from pathlib import Path

    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the io_uring driver")
    exe = os.path.join(tools, "uring_ops")
    src = Path(__file__).parent.parent / "collector" / "uring_ops.c"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", exe, str(src)], check=True, capture_output=True)
    return exe
