"""Network sensor: real connects, accepts and binds (IPv4, IPv6, TCP, UDP, unix paths and abstract names)
give events whose addresses and ports are the kernel's (ephemeral ports included)."""
from __future__ import annotations

import errno
import os
import socket

from fimstream.collector import records as R

from .conftest import root_only, syscall

pytestmark = root_only

SYS_accept = 43
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP


def net(ev):
    n = ev.net
    return n.family, n.protocol, n.local_addr, n.local_port, n.remote_addr, n.remote_port


def by_type(events, *types):
    return [e for e in events if e.type_name in types]


def test_tcp_ipv4_bind_connect_accept(capture):
    def act():
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))  # port 0: the kernel picks one
        srv.listen()
        cli = socket.socket()
        cli.connect(srv.getsockname())
        conn, _ = srv.accept()  # accept4(SOCK_CLOEXEC)
        names = srv.getsockname(), cli.getsockname()
        for s in (conn, cli, srv):
            s.close()
        return names

    events = by_type(capture(act), "bind", "connect", "accept")
    (_, port), (_, cport) = capture.result
    bind, connect, accept = events
    assert (bind.syscall, bind.retval) == ("bind", 0)
    assert net(bind) == (socket.AF_INET, TCP, "127.0.0.1", port, "0.0.0.0", 0)
    assert (connect.syscall, connect.retval) == ("connect", 0)
    assert net(connect) == (socket.AF_INET, TCP, "127.0.0.1", cport, "127.0.0.1", port)
    assert (accept.syscall, accept.retval >= 0, accept.flags) == ("accept4", True, socket.SOCK_CLOEXEC)
    assert net(accept) == (socket.AF_INET, TCP, "127.0.0.1", port, "127.0.0.1", cport)
    assert all(e.attrs["boot_ns"] == str(capture.collector.boot_offset_ns) for e in events)


def test_plain_accept_and_ipv6(capture):
    def act():
        srv = socket.socket(socket.AF_INET6)
        srv.bind(("::1", 0))
        srv.listen()
        cli = socket.socket(socket.AF_INET6)
        cli.connect(srv.getsockname()[:2])
        fd = syscall(SYS_accept, srv.fileno(), None, None)  # accept(2), not accept4
        os.close(fd)
        names = srv.getsockname()[1], cli.getsockname()[1]
        cli.close()
        srv.close()
        return names

    events = by_type(capture(act), "connect", "accept")
    port, cport = capture.result
    connect, accept = events
    assert net(connect) == (socket.AF_INET6, TCP, "::1", cport, "::1", port)
    assert (accept.syscall, accept.flags) == ("accept", 0)
    assert net(accept) == (socket.AF_INET6, TCP, "::1", port, "::1", cport)


def test_udp_connect_gets_its_source_port(capture):
    def act():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.connect(("::1", 53))  # no packet is sent: the kernel only picks the route and a source port
        name = s.getsockname()[1]
        s.close()
        return name

    (connect,) = by_type(capture(act), "connect")
    assert net(connect) == (socket.AF_INET6, UDP, "::1", capture.result, "::1", 53)


def test_failed_and_in_progress_connects(capture):
    def act():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, not listening: refused
        refused = socket.socket()
        try:
            refused.connect(("127.0.0.1", closed_port))
        except ConnectionRefusedError:
            pass
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        nb = socket.socket()
        nb.setblocking(False)
        rc = nb.connect_ex(srv.getsockname())
        for s in (probe, refused, srv, nb):
            s.close()
        return closed_port, rc

    events = by_type(capture(act), "connect")
    closed_port, rc = capture.result
    refused, in_progress = events
    assert refused.retval == -errno.ECONNREFUSED
    assert (refused.net.family, refused.net.remote_addr, refused.net.remote_port) == (socket.AF_INET, "127.0.0.1",
                                                                                      closed_port)
    assert in_progress.retval in (-errno.EINPROGRESS, 0) and -in_progress.retval == rc
    assert in_progress.net.local_port != 0  # chosen before the handshake completes


def test_unix_paths_and_abstract_names(capture, tmp_path):
    path = os.fsencode(tmp_path.resolve() / "s\xe9.sock")

    def act():
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()
        cli = socket.socket(socket.AF_UNIX)
        cli.bind(b"\0fimstream-client")
        cli.connect(path)
        conn, _ = srv.accept()
        dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            dgram.connect(b"/no/such.sock")
        except FileNotFoundError:
            pass
        for s in (conn, cli, srv, dgram):
            s.close()

    events = by_type(capture(act), "bind", "connect", "accept")
    srv_bind, cli_bind, connect, accept, failed = events
    shown = path.decode("utf-8", "backslashreplace")
    assert (srv_bind.net.family, srv_bind.attrs["local_path"], srv_bind.attrs["sock_type"]) == (
        socket.AF_UNIX, shown, "stream")
    assert cli_bind.attrs["local_path"] == "@fimstream-client"
    assert (connect.retval, connect.attrs["remote_path"], connect.attrs["local_path"]) == (
        0, shown, "@fimstream-client")
    assert net(connect) == (socket.AF_UNIX, 0, "", 0, "", 0)
    # the accepted socket carries the listener's name, its peer the client's
    assert (accept.attrs["local_path"], accept.attrs["remote_path"]) == (shown, "@fimstream-client")
    assert (failed.retval, failed.attrs["remote_path"], failed.attrs["sock_type"]) == (
        -errno.ENOENT, "/no/such.sock", "dgram")


def test_failed_bind_reports_the_address_asked_for(capture):
    def act():
        a = socket.socket()
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", port))
        except OSError:
            pass
        a.close()
        b.close()
        return port

    ok, failed = by_type(capture(act), "bind")
    assert failed.retval == -errno.EADDRINUSE
    assert (failed.net.family, failed.net.local_addr, failed.net.local_port) == (socket.AF_INET, "127.0.0.1",
                                                                                 capture.result)


def test_counters_count_the_network_kinds(capture):
    before = capture.collector.kernel_counters()

    def act():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", 9))
        s.close()

    events = by_type(capture(act), "bind", "connect")
    after = capture.collector.kernel_counters()
    assert len(events) == 2
    for kind in ("bind", "connect"):
        delta = {k: after[kind][k] - before[kind][k] for k in R.COUNTER_NAMES}
        assert delta["emitted"] >= 1 and delta["lost"] == 0
