"""What a sensor's decoder makes of one ring-buffer record: a small slotted object, not a dict, because
it is built for every event. The encoder (encoder.py) turns it into RawEvent Avro bytes; `to_record`
gives the dict form for tests and debugging."""
from __future__ import annotations

import struct

from fimstream.collector import records as R

EVENT_TYPES = ("unknown", "open", "create", "write", "truncate", "unlink", "rmdir", "rename", "chmod", "chown",
               "link", "symlink", "mkdir", "mknod", "mount", "umount", "setxattr", "mmap", "memfd_create",
               "exec", "fork", "exit", "connect", "accept", "bind",
               "setuid", "setgid", "setgroups", "capset", "unshare", "setns",
               "enforcement", "loss")
TYPE_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}


class FileRef:
    __slots__ = ("path", "flags", "dev", "ino", "nlink", "mode", "uid", "gid", "key", "mtime_ns", "ctime_ns")

    def __init__(self, path: bytes, flags: int = 0, dev: int = 0, ino: int = 0, nlink: int = 0, mode: int = 0,
                 uid: int = 0, gid: int = 0, key: bytes | None = None, mtime_ns: int = 0, ctime_ns: int = 0):
        self.path = path
        self.flags = flags
        self.dev = dev
        self.ino = ino
        self.nlink = nlink
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.key = key  # raw record bytes identifying this exact slot: the encoder caches by it
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns

    def set_stat(self, st) -> None:
        self.dev, self.ino, self.nlink = st.st_dev, st.st_ino, st.st_nlink
        self.mode, self.uid, self.gid = st.st_mode, st.st_uid, st.st_gid

    def to_record(self) -> dict:
        return dict(zip(FILE_FIELDS, self.avro_fields()))

    def __repr__(self) -> str:
        return f"FileRef({self.path!r}, flags={self.flags}, ino={self.ino})"

    def avro_fields(self) -> tuple:
        return (self.path, self.flags, self.dev, self.ino, self.nlink, self.mode, self.uid, self.gid, self.mtime_ns,
                self.ctime_ns)


class KernelFile:
    """A file slot the kernel filled from a struct file: its raw bytes (file_info + path) are all there is
    to keep, and the encoder's cache hit needs nothing else, so fields are parsed only when asked."""

    __slots__ = ("key",)

    def __init__(self, key: bytes):
        self.key = key

    def avro_fields(self) -> tuple:
        ino, dev, nlink, uid, gid, mode, flags, _, _ = R.FILE_INFO.unpack_from(self.key)
        return self.key[R.FILE_INFO.size:], flags, st_dev(dev), ino, nlink, mode, uid, gid, 0, 0

    path = property(lambda self: self.key[R.FILE_INFO.size:])
    flags = property(lambda self: self.avro_fields()[1])
    dev = property(lambda self: self.avro_fields()[2])
    ino = property(lambda self: self.avro_fields()[3])
    nlink = property(lambda self: self.avro_fields()[4])
    mode = property(lambda self: self.avro_fields()[5])
    uid = property(lambda self: self.avro_fields()[6])
    gid = property(lambda self: self.avro_fields()[7])

    mtime_ns = property(lambda self: self.avro_fields()[8])
    ctime_ns = property(lambda self: self.avro_fields()[9])

    def to_record(self) -> dict:
        return dict(zip(FILE_FIELDS, self.avro_fields()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, flags={self.flags}, ino={self.ino})"


_TIMES = R.FILE_INFO.size + 16


class TimedKernelFile(KernelFile):
    """A kernel file slot with the inode's mtime and ctime (the executed file): key = file_info, the two
    times (ns, little endian), then the path, so the encoder's cache tells a changed file apart."""

    __slots__ = ()

    def avro_fields(self) -> tuple:
        ino, dev, nlink, uid, gid, mode, flags, _, _ = R.FILE_INFO.unpack_from(self.key)
        mtime, ctime = _TWO_LONGS(self.key, R.FILE_INFO.size)
        return self.key[_TIMES:], flags, st_dev(dev), ino, nlink, mode, uid, gid, mtime, ctime

    path = property(lambda self: self.key[_TIMES:])


FILE_FIELDS = ("path", "path_flags", "dev", "ino", "nlink", "mode", "uid", "gid", "mtime_ns", "ctime_ns")
_TWO_LONGS = struct.Struct("<qq").unpack_from
_DEVS: dict[int, int] = {}


def st_dev(dev: int) -> int:
    """Kernel dev_t -> st_dev, memoised (a machine has a handful of devices)."""
    out = _DEVS.get(dev)
    if out is None:
        out = _DEVS[dev] = R.kernel_dev_to_st_dev(dev)
    return out


class ExecInfo:
    __slots__ = ("exe", "exe_ino", "exe_dev", "args", "args_truncated", "filename")

    def __init__(self, exe: bytes, exe_ino: int, exe_dev: int, args: list[bytes], args_truncated: bool,
                 filename: bytes):
        self.exe, self.exe_ino, self.exe_dev = exe, exe_ino, exe_dev
        self.args, self.args_truncated, self.filename = args, args_truncated, filename


class NetInfo:
    """RawEvent.net: addresses as text (IPv4 dotted, IPv6 compressed), ports in host order."""

    __slots__ = ("family", "protocol", "local_addr", "local_port", "remote_addr", "remote_port")

    def __init__(self, family: int, protocol: int = 0, local_addr: str = "", local_port: int = 0,
                 remote_addr: str = "", remote_port: int = 0):
        self.family, self.protocol = family, protocol
        self.local_addr, self.local_port = local_addr, local_port
        self.remote_addr, self.remote_port = remote_addr, remote_port

    def to_record(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return (f"NetInfo(family={self.family}, proto={self.protocol}, local={self.local_addr}:{self.local_port}, "
                f"remote={self.remote_addr}:{self.remote_port})")


class CredInfo:
    """RawEvent.cred: credentials before and after (caps: the effective capability set)."""

    __slots__ = ("old_uid", "old_euid", "old_gid", "old_egid", "new_uid", "new_euid", "new_gid", "new_egid",
                 "old_caps", "new_caps")

    def __init__(self, old: tuple[int, int, int, int], new: tuple[int, int, int, int], old_caps: int = 0,
                 new_caps: int = 0):
        self.old_uid, self.old_euid, self.old_gid, self.old_egid = old
        self.new_uid, self.new_euid, self.new_gid, self.new_egid = new
        self.old_caps, self.new_caps = old_caps, new_caps

    def to_record(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"CredInfo({self.to_record()})"


class Event:
    """Fields a decoder does not set keep the class defaults (cheaper than setting all of them)."""

    file: FileRef | None = None
    target: FileRef | None = None
    flags = 0
    mode = 0
    owner_uid = -1
    owner_gid = -1
    exit_code = 0
    attrs: dict[str, str] | None = None
    exec: ExecInfo | None = None
    net: NetInfo | None = None
    cred: CredInfo | None = None
    child_pid = 0
    child_start = 0

    def __init__(self, kind: int, etype: int, syscall: str, hdr: tuple, sig: bytes):
        self.kind = kind
        self.type = etype  # index into EVENT_TYPES
        self.syscall = syscall
        self.hdr = hdr  # records.HEADER tuple
        self.sig = sig  # header bytes 24..92: the thread's process context
        self.retval = hdr[H_RETVAL]

    @property
    def pid(self) -> int:
        return self.hdr[H_PID]

    @property
    def type_name(self) -> str:
        return EVENT_TYPES[self.type]

    def __repr__(self) -> str:
        return f"Event({self.type_name}, {self.syscall}, pid={self.pid}, file={self.file}, target={self.target})"


# indexes into the records.HEADER tuple
(H_KIND, H_HFLAGS, H_RESERVED, H_KTIME, H_RETVAL, H_START, H_CGROUP, H_PID, H_TID, H_PPID, H_UID, H_GID,
 H_EUID, H_EGID, H_AUID, H_SESSION, H_COMM) = range(17)
assert len(R.HEADER.unpack(bytes(R.HEADER_SIZE))) == 17
