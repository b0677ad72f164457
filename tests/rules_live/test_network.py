"""network.yaml: shells on the network, netcat with a program to run, live."""
from __future__ import annotations

import os
import socket

import pytest

from .harness import TRUE, Namespace, assert_fires, assert_quiet, fires, in_child, quiet, run


def outbound_ip() -> str:
    """This machine's own address on its default route (not loopback): a connection to it leaves the
    shell like a reverse shell's, and a listener here answers it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the route's source address
        return s.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback IPv4 route on this machine")
    finally:
        s.close()


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def bash_connect(ip: str, port: int):
    return run("/bin/bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}")


@fires("shell_outbound_connection")
def test_shell_connects_out(live, listener):
    ip = outbound_ip()
    out = live.trigger(bash_connect(ip, listener))
    assert out.result[1] == 0
    hits = assert_fires(out, "shell_outbound_connection")
    assert (hits[0]["event"]["net"]["remote_addr"], hits[0]["event"]["net"]["remote_port"]) == (ip, listener)


@quiet("shell_outbound_connection")
def test_shell_connecting_to_loopback_is_quiet(live, listener):
    out = live.trigger(bash_connect("127.0.0.1", listener))
    assert out.result[1] == 0
    assert any(e["event_type"] == "connect" for e in out.events) or live.kernel_policy, out.describe()
    assert_quiet(out, "shell_outbound_connection")


def netcat(*args, scratch):
    """/usr/bin/nc with these arguments. The real one when installed; otherwise (this machine has no
    netcat) a stand-in binary at /usr/bin/nc on a tmpfs over /usr/bin in a private mount namespace: the
    rule judges the exec (path and arguments), not what netcat does afterwards."""
    if os.path.exists("/usr/bin/nc"):
        return run("/usr/bin/nc", *args)
    image = open(TRUE, "rb").read()

    def go():
        with open("/usr/bin/nc", "wb") as f:
            f.write(image)
        os.chmod("/usr/bin/nc", 0o755)
        os.execv("/usr/bin/nc", ["nc", *args])
    return in_child(go, ns=Namespace(scratch, tmpfs=("/usr/bin",)))


@fires("netcat_remote_shell")
def test_netcat_with_a_shell_to_run(live, scratch, listener):
    out = live.trigger(netcat("-e", "/bin/sh", "127.0.0.1", str(listener), scratch=scratch))
    nc = os.path.realpath("/usr/bin/nc") if os.path.exists("/usr/bin/nc") else "/usr/bin/nc"  # nc.openbsd...
    assert_fires(out, "netcat_remote_shell", nc)


@quiet("netcat_remote_shell")
def test_netcat_port_probe_is_quiet(live, scratch, listener):
    out = live.trigger(netcat("-z", "-w", "1", "127.0.0.1", str(listener), scratch=scratch))
    assert any(e["event_type"] == "exec" for e in out.events), out.describe()
    assert_quiet(out, "netcat_remote_shell")
