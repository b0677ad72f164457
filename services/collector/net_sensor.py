"""Network sensor, userspace half: decodes bpf/net_sensor.c's connect/accept/bind records into events with
RawEvent.net filled from the kernel's socket (and the caller's sockaddr where the socket cannot say:
the destination of a failed connect, the path of a unix socket connected to).

Which side comes from where:
    connect  remote = the sockaddr passed (what was asked, also when it failed); local = the socket's
             address after the call (the source address and ephemeral port the kernel chose)
    bind     local = the socket's address after a successful bind (port 0 -> the port it got);
             the sockaddr passed when the bind failed
    accept   both ends from the new connection's socket
Unix sockets: their paths go to attrs["local_path"] / attrs["remote_path"] (abstract names as "@name");
net.local_addr/remote_addr stay empty (they are IP addresses for rules), attrs["sock_type"] says stream,
dgram or seqpacket.
"""
from __future__ import annotations

import socket
import struct

from fimstream.collector import records as R
from fimstream.collector.encoder import text_bytes
from fimstream.collector.event import TYPE_INDEX, Event, NetInfo
from fimstream.collector.offsets import Need
from fimstream.collector.sensor import Sensor

NET_BODY = struct.Struct("<IiQHHHHHHHHH6x16s16s")
# sc, fd, flags, family, type, protocol, state, lport, rport, ua_len, kl_len, kr_len, pad, laddr, raddr
AF_UNIX, AF_INET, AF_INET6 = socket.AF_UNIX, socket.AF_INET, socket.AF_INET6
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
TYPES = {R.RK_CONNECT: "connect", R.RK_ACCEPT: "accept", R.RK_BIND: "bind"}
_HDR = R.HEADER.unpack_from
_BODY = R.HEADER_SIZE
_U16BE = struct.Struct(">H").unpack_from


def parse_sockaddr(raw: bytes) -> tuple[int, str, int, bytes | None]:
    """(family, address text, port, unix path) of a struct sockaddr as the kernel or the caller wrote it."""
    if len(raw) < 2:
        return 0, "", 0, None
    family = raw[0] | raw[1] << 8
    if family == AF_INET and len(raw) >= 8:
        return family, socket.inet_ntop(AF_INET, raw[4:8]), _U16BE(raw, 2)[0], None
    if family == AF_INET6 and len(raw) >= 24:
        return family, socket.inet_ntop(AF_INET6, raw[8:24]), _U16BE(raw, 2)[0], None
    if family == AF_UNIX:
        return family, "", 0, unix_path(raw[2:])
    return family, "", 0, None


def unix_path(sun_path: bytes) -> bytes:
    """sun_path as tools show it: up to its NUL; an abstract name (leading NUL) as '@name'."""
    if sun_path[:1] == b"\0":
        return b"@" + sun_path[1:]
    return sun_path.split(b"\0", 1)[0]


class NetSensor(Sensor):
    name = "network"
    source = "net_sensor.c"
    needs = {
        "O_FILE_INODE": Need(("file", "f_inode"), 8),
        "O_FILE_PRIVATE_DATA": Need(("file", "private_data"), 8),
        "O_SOCKET_SK": Need(("socket", "sk"), 8),
        "O_SK_FAMILY": Need(("sock", "__sk_common", "skc_family"), 2),
        "O_SK_STATE": Need(("sock", "__sk_common", "skc_state"), 1),
        "O_SK_DADDR": Need(("sock", "__sk_common", "skc_daddr"), 4),
        "O_SK_RCV_SADDR": Need(("sock", "__sk_common", "skc_rcv_saddr"), 4),
        "O_SK_DPORT": Need(("sock", "__sk_common", "skc_dport"), 2),
        "O_SK_NUM": Need(("sock", "__sk_common", "skc_num"), 2),
        "O_SK_V6_DADDR": Need(("sock", "__sk_common", "skc_v6_daddr"), 16),
        "O_SK_V6_RCV_SADDR": Need(("sock", "__sk_common", "skc_v6_rcv_saddr"), 16),
        "O_SK_TYPE": Need(("sock", "sk_type"), 2),
        "O_SK_PROTOCOL": Need(("sock", "sk_protocol"), 2),
        "O_UNIX_SOCK_ADDR": Need(("unix_sock", "addr"), 8),
        "O_UNIX_SOCK_PEER": Need(("unix_sock", "peer"), 8),
        "O_UNIX_ADDRESS_LEN": Need(("unix_address", "len"), 4),
        "O_UNIX_ADDRESS_NAME": Need(("unix_address", "name")),
    }

    def __init__(self, boot_ns: int = 0):
        super().__init__()
        self.boot_ns = str(boot_ns)
        self.decoders = {kind: self.decode for kind in TYPES}

    def decode(self, data, off: int, length: int) -> Event:
        hdr = _HDR(data, off)
        kind = hdr[0]
        (sc, fd, flags, family, stype, proto, _state, lport, rport, ua_len, kl_len, kr_len, laddr,
         raddr) = NET_BODY.unpack_from(data, off + _BODY)
        ev = Event(kind, TYPE_INDEX[TYPES[kind]], R.SYSCALL_NAMES.get(sc, str(sc)), hdr,
                   bytes(data[off + R.SIG_START:off + R.SIG_END]))
        var = off + _BODY + NET_BODY.size
        asked = bytes(data[var:var + ua_len])
        var += ua_len
        k_local = bytes(data[var:var + kl_len])
        k_remote = bytes(data[var + kl_len:var + kl_len + kr_len])
        u_family, u_addr, u_port, u_path = parse_sockaddr(asked)
        attrs = {"boot_ns": self.boot_ns, "fd": str(fd)}
        net = NetInfo(family or u_family, proto)
        if family in (AF_INET, AF_INET6):  # the kernel's view of the socket
            size = 4 if family == AF_INET else 16
            net.local_addr, net.local_port = socket.inet_ntop(family, laddr[:size]), lport
            net.remote_addr, net.remote_port = socket.inet_ntop(family, raddr[:size]), rport
        local_path = unix_path(k_local[2:]) if len(k_local) > 2 else None
        remote_path = unix_path(k_remote[2:]) if len(k_remote) > 2 else None
        if kind == R.RK_CONNECT:
            if u_family in (AF_INET, AF_INET6):  # the destination asked for, whatever happened to it
                net.remote_addr, net.remote_port = u_addr, u_port
            elif u_family == AF_UNIX:
                remote_path = u_path
            if u_family and u_family != family:  # AF_UNSPEC (dissolve) or a mismatch: say what was asked
                attrs["sockaddr_family"] = str(u_family)
        elif kind == R.RK_BIND:
            if ev.retval < 0 or not family:
                net.family = u_family or family
                if u_family in (AF_INET, AF_INET6):
                    net.local_addr, net.local_port = u_addr, u_port
                local_path = u_path if u_family == AF_UNIX else local_path
            elif family == AF_UNIX and local_path is None:
                local_path = u_path
        else:
            ev.flags = flags
        if net.family == AF_UNIX:
            net.local_addr = net.remote_addr = ""
            if stype in SOCK_TYPES:
                attrs["sock_type"] = SOCK_TYPES[stype]
        if local_path:
            attrs["local_path"] = text_bytes(local_path).decode()
        if remote_path:
            attrs["remote_path"] = text_bytes(remote_path).decode()
        ev.net = net
        ev.attrs = attrs
        return ev
