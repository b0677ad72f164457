"""Process sensor, userspace half: decodes exec/fork/exit records and keeps the process cache current
(the cache is this sensor's state: Tetragon's process sensor + execve map, in one unit)."""
from __future__ import annotations

import struct

from fimstream.collector import records as R
from fimstream.collector.btf import BtfError
from fimstream.collector.event import TYPE_INDEX, CredInfo, Event, ExecInfo, TimedKernelFile
from fimstream.collector.file_sensor import SlotReader
from fimstream.collector.offsets import Need
from fimstream.collector.paths import Resolver
from fimstream.collector.proctable import ProcTable, split_args
from fimstream.collector.sensor import Sensor
from fimstream.schemas.codec import text

T_EXEC, T_FORK, T_EXIT = TYPE_INDEX["exec"], TYPE_INDEX["fork"], TYPE_INDEX["exit"]
_HDR = R.HEADER.unpack_from
_FI_SIZE = R.FILE_INFO.size
_SIG0, _SIG1 = R.SIG_START, R.SIG_END
_BODY = R.HEADER_SIZE
_FI = R.FILE_INFO.unpack_from
_TIMES = struct.Struct("<qq").pack
EXF_OLD_CRED, EXF_OVERLAY, EXF_UPPER = 1, 2, 4  # exec_body.xflags


class ProcessSensor(Sensor):
    name = "process"
    source = "process_sensor.c"
    needs = {
        "O_SB_MAGIC": Need(("super_block", "s_magic"), 8),
        "O_OVL_INODE_VFS_INODE": Need(("ovl_inode", "vfs_inode")),
        "O_OVL_INODE_UPPERDENTRY": Need(("ovl_inode", "__upperdentry"), 8),
    }

    def constants(self, btf) -> dict[str, int]:
        """Inode times: i_{m,c}time_sec + _nsec since 6.11; timespec64 members (tv_sec, tv_nsec) before
        (6.6-6.10 call the ctime one __i_ctime); -1 when none is found (times left 0)."""
        out = {}
        for t in ("mtime", "ctime"):
            for sec, nsec in (((f"i_{t}_sec",), (f"i_{t}_nsec",)), ((f"i_{t}", "tv_sec"), (f"i_{t}", "tv_nsec")),
                              ((f"__i_{t}", "tv_sec"), (f"__i_{t}", "tv_nsec"))):
                try:
                    out[f"O_INODE_{t.upper()}_SEC"] = btf.offset("inode", *sec).offset
                    out[f"O_INODE_{t.upper()}_NSEC"] = btf.offset("inode", *nsec).offset
                    break
                except BtfError:
                    continue
            else:
                out[f"O_INODE_{t.upper()}_SEC"] = out[f"O_INODE_{t.upper()}_NSEC"] = -1
        if (out["O_INODE_MTIME_SEC"] < 0) != (out["O_INODE_CTIME_SEC"] < 0):
            out["O_INODE_MTIME_SEC"] = out["O_INODE_CTIME_SEC"] = -1
        return out

    def __init__(self, procs: ProcTable, resolver: Resolver, boot_ns: int = 0):
        super().__init__()
        self.procs = procs
        self.slots = SlotReader(resolver)
        self.boot_ns = str(boot_ns)
        self.decoders = {R.RK_EXEC: self.decode_exec, R.RK_FORK: self.decode_fork, R.RK_EXIT: self.decode_exit,
                         R.RK_CGROUP_ATTACH: self.decode_cgroup_attach}

    @staticmethod
    def _event(data, off: int, kind: int, etype: int, syscall: str) -> Event:
        return Event(kind, etype, syscall, _HDR(data, off), bytes(data[off + _SIG0:off + _SIG1]))

    def decode_exec(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        (fname_len, args_len, args_flags, _, sc, dfd, mnt_ns, xflags, old_uid, old_euid, old_gid, old_egid,
         old_caps, new_caps, mtime, ctime) = R.EXEC_BODY.unpack_from(data, body + _FI_SIZE)
        ev = self._event(data, off, R.RK_EXEC, T_EXEC, R.SYSCALL_NAMES.get(sc, "kernel_execve"))
        pid = ev.hdr[7]
        var = body + _FI_SIZE + R.EXEC_BODY.size
        _, _, _, _, _, _, pflags, str_len, path_len = _FI(data, body)
        if ev.retval == 0 and not str_len and not pflags & R.PF_UNRESOLVED:  # the kernel's exe_file, with times
            ev.file = TimedKernelFile(bytes(data[body:body + _FI_SIZE]) + _TIMES(mtime, ctime)
                                      + bytes(data[var:var + path_len]))
            var += path_len
        else:
            ev.file, _, var = self.slots.slot(data, body, var, pid, True)
        filename = bytes(data[var:var + fname_len])
        var += fname_len
        args, truncated = split_args(bytes(data[var:var + args_len]), R.ARGS_MAX + 1)
        truncated = truncated or bool(args_flags & 1)
        ev.exec = ExecInfo(ev.file.path, ev.file.ino, ev.file.dev, args, truncated, filename)
        attrs = {"boot_ns": self.boot_ns}
        if filename and filename != ev.file.path:
            attrs["filename"] = text(filename)  # a script, a symlink, or a relative name
        if xflags & EXF_OVERLAY:  # container drift: the binary is not (only) in the image's layers
            attrs["upper_layer"] = "1" if xflags & EXF_UPPER else "0"
        ev.attrs = attrs
        if ev.retval == 0 and xflags & EXF_OLD_CRED:
            hdr = ev.hdr  # after the exec
            old, new = (old_uid, old_euid, old_gid, old_egid), (hdr[10], hdr[12], hdr[11], hdr[13])
            if old != new or old_caps != new_caps:  # set-user-ID/set-group-ID bits or file capabilities
                ev.cred = CredInfo(old, new, old_caps, new_caps)
        if ev.retval == 0:
            self.procs.on_exec(pid, ev.hdr, ev.file.path, ev.file.ino, ev.file.dev, args, truncated, mnt_ns)
        return ev

    def decode_fork(self, data, off: int, length: int) -> Event:
        child_pid, _, child_start = R.FORK_BODY.unpack_from(data, off + _BODY)
        ev = self._event(data, off, R.RK_FORK, T_FORK, "fork")
        ev.child_pid, ev.child_start = child_pid, child_start
        ev.attrs = {"child_pid": str(child_pid), "child_start_time_ns": str(child_start), "boot_ns": self.boot_ns}
        self.procs.on_fork(ev.hdr[7], ev.hdr, child_pid, child_start)
        return ev

    def decode_exit(self, data, off: int, length: int) -> Event:
        exit_code, _ = R.EXIT_BODY.unpack_from(data, off + _BODY)
        ev = self._event(data, off, R.RK_EXIT, T_EXIT, "exit")
        ev.exit_code = exit_code
        ev.attrs = {"boot_ns": self.boot_ns}
        self.procs.on_exit(ev.hdr[7])
        return ev

    def decode_cgroup_attach(self, data, off: int, length: int) -> None:
        """A cgroup move: the cache's business only (no event)."""
        pid, hierarchy, cgroup_id, path_len, _, _ = R.CGROUP_BODY.unpack_from(data, off + _BODY)
        var = off + _BODY + R.CGROUP_BODY.size
        self.procs.on_cgroup_attach(pid, hierarchy, cgroup_id, bytes(data[var:var + path_len]))
        return None
