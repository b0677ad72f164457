"""io_uring sensor, userspace half: decodes bpf/uring_sensor.c's records into the events the same operation
would give as a syscall, with `syscall` saying it came through io_uring:

    io_uring:openat / io_uring:openat2   open or create (FMODE_CREATED), result at completion
    io_uring:write, writev, write_fixed, writev_fixed       write (the first of each open file)
    io_uring:read, readv, read_fixed, readv_fixed, read_multishot
                                          open (the first read of an open file whose io_uring open was not
                                          seen: an fd opened before, passed in, or opened by a syscall)
    io_uring:unlinkat, renameat, mkdirat, symlinkat, linkat
                                          unlink/rmdir, rename, mkdir, symlink, link: the same files as the
                                          syscalls' events (strings resolved in userspace, identity by stat)

attrs: "fd" or "fixed_index" (a registered file), "direct_slot" (an open into the registered files),
"uring": "submission" when the result was never observed (IOSQE_CQE_SKIP_SUCCESS: no CQE on success;
retval 0 then means submitted) or "completion-only" (submitted before the collector saw it: the flags
are the opened file's, the mode is unknown).
"""
from __future__ import annotations

import errno
import struct

from fimstream.collector import records as R
from fimstream.collector.btf import BtfError
from fimstream.collector.event import TYPE_INDEX, Event, FileRef, KernelFile
from fimstream.collector.file_sensor import FMODE_CREATED, O_NOFOLLOW, SlotReader, stat_into
from fimstream.collector.offsets import Need
from fimstream.collector.paths import Resolver
from fimstream.collector.sensor import Sensor

URING_OPEN_BODY = struct.Struct("<IiQQQIIQII")  # sc, dfd, flags, mode, resolve, fmode, file_slot, user_data,
#                                                stage, pad; then file_info
URING_RW_BODY = struct.Struct("<IiIIQ")  # op, fd, fixed, f_flags, user_data; then file_info
URING_PATH_BODY = struct.Struct("<IiiIIIQ")  # op, dfd, dfd2, flags, mode, stage, user_data; then file_info f, t
URS_COMPLETE, URS_SUBMIT, URS_NO_SUBMIT = 0, 1, 2
STAGES = {URS_SUBMIT: "submission", URS_NO_SUBMIT: "completion-only"}
RW_OPS = ("READV", "WRITEV", "READ_FIXED", "WRITE_FIXED", "READ", "WRITE", "READ_MULTISHOT", "READV_FIXED",
          "WRITEV_FIXED")
PATH_OPS = ("UNLINKAT", "RENAMEAT", "MKDIRAT", "SYMLINKAT", "LINKAT")
T_OPEN, T_CREATE, T_WRITE = TYPE_INDEX["open"], TYPE_INDEX["create"], TYPE_INDEX["write"]
AT_REMOVEDIR, AT_SYMLINK_FOLLOW, RENAME_EXCHANGE = 0x200, 0x400, 2
_HDR = R.HEADER.unpack_from
_BODY = R.HEADER_SIZE
_FI_SIZE = R.FILE_INFO.size
_FILE_INDEX_ALLOC = 0xFFFFFFFF


class UringSensor(Sensor):
    name = "io_uring"
    source = "uring_sensor.c"
    tails = ("uring_tails", ("tail__uring_hazard",))  # the filter's hazards after a path operation
    needs = {
        "O_IO_KIOCB_OPCODE": Need(("io_kiocb", "opcode"), 1),
        "O_IO_KIOCB_CTX": Need(("io_kiocb", "ctx"), 8),
        "O_IO_KIOCB_CMD": Need(("io_kiocb", "cmd")),
        "O_IO_KIOCB_CQE_FD": Need(("io_kiocb", "cqe", "fd"), 4),
        "O_IO_OPEN_DFD": Need(("io_open", "dfd"), 4),
        "O_IO_OPEN_FILE_SLOT": Need(("io_open", "file_slot"), 4),
        "O_IO_OPEN_FILENAME": Need(("io_open", "filename"), 8),
        "O_IO_OPEN_HOW": Need(("io_open", "how"), 24),
        "O_IO_CLOSE_FD": Need(("io_close", "fd"), 4),
        "O_IO_CLOSE_FILE_SLOT": Need(("io_close", "file_slot"), 4),
        "O_FILENAME_UPTR": Need(("filename", "uptr"), 8),
        "O_FILENAME_NAME": Need(("filename", "name"), 8),
        "O_IO_UNLINK_DFD": Need(("io_unlink", "dfd"), 4),
        "O_IO_UNLINK_FLAGS": Need(("io_unlink", "flags"), 4),
        "O_IO_UNLINK_FILENAME": Need(("io_unlink", "filename"), 8),
        "O_IO_MKDIR_DFD": Need(("io_mkdir", "dfd"), 4),
        "O_IO_MKDIR_MODE": Need(("io_mkdir", "mode"), 2),
        "O_IO_MKDIR_FILENAME": Need(("io_mkdir", "filename"), 8),
        **{f"O_IO_{s.upper()}_{m.upper()}": Need((f"io_{s}", m), size) for s in ("rename", "link")
           for m, size in (("old_dfd", 4), ("new_dfd", 4), ("oldpath", 8), ("newpath", 8), ("flags", 4))},
        "O_CTX_FILES_NR": Need(("io_ring_ctx", "file_table", "data", "nr"), 4),
        "O_CTX_FILES_NODES": Need(("io_ring_ctx", "file_table", "data", "nodes"), 8),
        "O_RSRC_NODE_FILE_PTR": Need(("io_rsrc_node", "file_ptr"), 8),
        "O_FILE_INODE": Need(("file", "f_inode"), 8),
        "O_FILE_F_FLAGS": Need(("file", "f_flags"), 4),
    }

    def __init__(self, resolver: Resolver):
        super().__init__()
        self.slots = SlotReader(resolver)
        self.op_names: dict[int, str] = {}
        self.decoders = {R.RK_URING_OPEN: self.decode_open, R.RK_URING_RW: self.decode_rw,
                         R.RK_URING_PATH: self.decode_path}

    def constants(self, btf) -> dict[str, int]:
        """Opcodes (enum io_uring_op; -1 for those this kernel lacks) and the request flag bits."""
        out = {}
        for op in ("OPENAT", "OPENAT2", "CLOSE") + RW_OPS + PATH_OPS:
            try:
                out[f"IOP_{op}"] = value = btf.enum_value("io_uring_op", f"IORING_OP_{op}")
                self.op_names[value] = op.lower()
            except BtfError:
                out[f"IOP_{op}"] = -1
        if min(out["IOP_OPENAT"], out["IOP_READ"], out["IOP_WRITE"]) < 0:
            raise BtfError("io_uring_op lacks OPENAT/READ/WRITE")
        out["REQ_F_FIXED_FILE_BIT_"] = btf.enumerator("REQ_F_FIXED_FILE_BIT")
        out["REQ_F_CQE_SKIP_BIT_"] = btf.enumerator("REQ_F_CQE_SKIP_BIT")
        return out

    def decode_open(self, data, off: int, length: int) -> Event:
        hdr = _HDR(data, off)
        body = off + _BODY
        sc, dfd, flags, mode, resolve, fmode, file_slot, _, stage, _ = URING_OPEN_BODY.unpack_from(data, body)
        ev = Event(R.RK_URING_OPEN, T_CREATE if fmode & FMODE_CREATED else T_OPEN,
                   R.SYSCALL_NAMES.get(sc, "io_uring:openat"), hdr, bytes(data[off + R.SIG_START:off + R.SIG_END]))
        fi = body + URING_OPEN_BODY.size
        follow = not flags & O_NOFOLLOW
        ev.file, root, _ = self.slots.slot(data, fi, fi + _FI_SIZE, hdr[7], follow)
        if (ev.retval < 0 and ev.retval != -errno.ENOENT) or stage == URS_SUBMIT:
            stat_into(ev.file, root, follow)  # e.g. EACCES, or not opened yet: the file exists, say which one
        ev.flags, ev.mode = flags, mode
        attrs = {}
        if resolve:
            attrs["resolve"] = hex(resolve)
        if file_slot:
            attrs["direct_slot"] = str(ev.retval if file_slot == _FILE_INDEX_ALLOC else file_slot - 1)
        if stage in STAGES:
            attrs["uring"] = STAGES[stage]
        ev.attrs = attrs or None
        return ev

    def decode_rw(self, data, off: int, length: int) -> Event:
        hdr = _HDR(data, off)
        body = off + _BODY
        op, fd, fixed, f_flags, _ = URING_RW_BODY.unpack_from(data, body)
        name = self.op_names.get(op, str(op))
        ev = Event(R.RK_URING_RW, T_WRITE if name.startswith("write") else T_OPEN, f"io_uring:{name}", hdr,
                   bytes(data[off + R.SIG_START:off + R.SIG_END]))
        fi = body + URING_RW_BODY.size
        _, _, _, _, _, _, _, _, path_len = R.FILE_INFO.unpack_from(data, fi)
        ev.file = KernelFile(bytes(data[fi:fi + _FI_SIZE + path_len]))
        ev.flags = f_flags
        ev.attrs = {"fixed_index" if fixed else "fd": str(fd)}
        return ev

    def decode_path(self, data, off: int, length: int) -> Event:
        hdr = _HDR(data, off)
        body = off + _BODY
        op, _, _, flags, mode, stage, _ = URING_PATH_BODY.unpack_from(data, body)
        name = self.op_names.get(op, str(op))
        etype = {"unlinkat": "rmdir" if flags & AT_REMOVEDIR else "unlink", "renameat": "rename",
                 "mkdirat": "mkdir", "symlinkat": "symlink", "linkat": "link"}.get(name, "unknown")
        ev = Event(R.RK_URING_PATH, TYPE_INDEX[etype], f"io_uring:{name}", hdr,
                   bytes(data[off + R.SIG_START:off + R.SIG_END]))
        f_fi = body + URING_PATH_BODY.size
        t_fi = f_fi + _FI_SIZE
        pid, ok = hdr[7], ev.retval == 0 and stage == URS_COMPLETE
        ev.file, f_root, var = self.slots.slot(data, f_fi, t_fi + _FI_SIZE, pid,
                                               etype == "link" and bool(flags & AT_SYMLINK_FOLLOW))
        if etype == "symlink":  # the target as written: text, never resolved
            _, _, _, _, _, _, _, str_len, _ = R.FILE_INFO.unpack_from(data, t_fi)
            ev.target = FileRef(bytes(data[var:var + str_len]))
        elif etype in ("rename", "link"):
            ev.target, t_root, _ = self.slots.slot(data, t_fi, var, pid, False)
            if ok and not (etype == "rename" and flags & RENAME_EXCHANGE):
                if stat_into(ev.target, t_root, False):  # the inode now (also) lives at the destination
                    f = ev.file
                    f.dev, f.ino, f.nlink, f.mode, f.uid, f.gid = (ev.target.dev, ev.target.ino, ev.target.nlink,
                                                                 ev.target.mode, ev.target.uid, ev.target.gid)
            else:
                stat_into(ev.file, f_root, False)
                stat_into(ev.target, t_root, False)
        if etype in ("mkdir", "symlink") and (ok or ev.retval < 0 and ev.retval != -errno.ENOENT) \
                or etype in ("unlink", "rmdir") and not ok:
            stat_into(ev.file, f_root, False)
        ev.flags, ev.mode = flags, mode
        if stage in STAGES:
            ev.attrs = {"uring": STAGES[stage]}
        return ev
