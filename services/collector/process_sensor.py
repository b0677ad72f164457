"""Process sensor, userspace half: decodes exec/fork/exit records and keeps the process cache current
(the cache is this sensor's state: Tetragon's process sensor + execve map, in one unit)."""
from __future__ import annotations

from fimstream.collector import records as R
from fimstream.collector.event import TYPE_INDEX, Event, ExecInfo
from fimstream.collector.file_sensor import SlotReader
from fimstream.collector.paths import Resolver
from fimstream.collector.proctable import ProcTable, split_args
from fimstream.collector.sensor import Sensor
from fimstream.schemas.codec import text

T_EXEC, T_FORK, T_EXIT = TYPE_INDEX["exec"], TYPE_INDEX["fork"], TYPE_INDEX["exit"]
_HDR = R.HEADER.unpack_from
_FI_SIZE = R.FILE_INFO.size
_SIG0, _SIG1 = R.SIG_START, R.SIG_END
_BODY = R.HEADER_SIZE


class ProcessSensor(Sensor):
    name = "process"
    source = "process_sensor.c"

    def __init__(self, procs: ProcTable, resolver: Resolver):
        super().__init__()
        self.procs = procs
        self.slots = SlotReader(resolver)
        self.decoders = {R.RK_EXEC: self.decode_exec, R.RK_FORK: self.decode_fork, R.RK_EXIT: self.decode_exit}

    @staticmethod
    def _event(data, off: int, kind: int, etype: int, syscall: str) -> Event:
        return Event(kind, etype, syscall, _HDR(data, off), bytes(data[off + _SIG0:off + _SIG1]))

    def decode_exec(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        fname_len, args_len, args_flags, _, sc, dfd, mnt_ns, _ = R.EXEC_BODY.unpack_from(data, body + _FI_SIZE)
        ev = self._event(data, off, R.RK_EXEC, T_EXEC, R.SYSCALL_NAMES.get(sc, "kernel_execve"))
        pid = ev.hdr[7]
        var = body + _FI_SIZE + R.EXEC_BODY.size
        ev.file, _, var = self.slots.slot(data, body, var, pid, True)
        filename = bytes(data[var:var + fname_len])
        var += fname_len
        args, truncated = split_args(bytes(data[var:var + args_len]), R.ARGS_MAX + 1)
        truncated = truncated or bool(args_flags & 1)
        ev.exec = ExecInfo(ev.file.path, ev.file.ino, ev.file.dev, args, truncated, filename)
        if filename and filename != ev.file.path:
            ev.attrs = {"filename": text(filename)}  # a script, a symlink, or a relative name
        if ev.retval == 0:
            self.procs.on_exec(pid, ev.hdr, ev.file.path, ev.file.ino, ev.file.dev, args, truncated, mnt_ns)
        return ev

    def decode_fork(self, data, off: int, length: int) -> Event:
        child_pid, _, child_start = R.FORK_BODY.unpack_from(data, off + _BODY)
        ev = self._event(data, off, R.RK_FORK, T_FORK, "fork")
        ev.child_pid, ev.child_start = child_pid, child_start
        ev.attrs = {"child_pid": str(child_pid), "child_start_time_ns": str(child_start)}
        self.procs.on_fork(ev.hdr[7], ev.hdr, child_pid, child_start)
        return ev

    def decode_exit(self, data, off: int, length: int) -> Event:
        exit_code, _ = R.EXIT_BODY.unpack_from(data, off + _BODY)
        ev = self._event(data, off, R.RK_EXIT, T_EXIT, "exit")
        ev.exit_code = exit_code
        self.procs.on_exit(ev.hdr[7])
        return ev
