"""File sensor, userspace half: decodes bpf/file_sensor.c's records (open/create, unlink/rmdir, rename,
chmod, chown) into Events, resolving caller strings where the kernel could not (paths.py)."""
from __future__ import annotations

import errno
import os
import struct

from fimstream.collector import records as R
from fimstream.collector.event import TYPE_INDEX, Event, FileRef, KernelFile
from fimstream.collector.offsets import Need
from fimstream.collector.paths import Resolver
from fimstream.collector.sensor import Sensor
from fimstream.schemas.codec import text

FMODE_CREATED = 1 << 20  # file->f_mode: the open created the file (stable since 4.19; see the test)
O_NOFOLLOW = 0o400000
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
RENAME_EXCHANGE = 2
T_OPEN, T_CREATE, T_UNLINK, T_RMDIR, T_RENAME, T_CHMOD, T_CHOWN = (
    TYPE_INDEX[n] for n in ("open", "create", "unlink", "rmdir", "rename", "chmod", "chown"))
AT_SYMLINK_FOLLOW = 0x400
UMOUNT_NOFOLLOW = 8
MS_BIND = 4096
# FILEOP/FILEOP2 kinds: event type, and whether the syscall follows a symlink in the last component
FILEOP_TYPES = {R.RK_WRITE: "write", R.RK_TRUNCATE: "truncate", R.RK_MKDIR: "mkdir", R.RK_MKNOD: "mknod",
                R.RK_SETXATTR: "setxattr", R.RK_MMAP: "mmap", R.RK_MEMFD_CREATE: "memfd_create",
                R.RK_UMOUNT: "umount", R.RK_LINK: "link", R.RK_SYMLINK: "symlink", R.RK_MOUNT: "mount"}
NOFOLLOW_SC = {R.SC["lsetxattr"], R.SC["mkdir"], R.SC["mkdirat"], R.SC["mknod"], R.SC["mknodat"]}
_HDR = R.HEADER.unpack_from
_FI = R.FILE_INFO.unpack_from
_FI_SIZE = R.FILE_INFO.size
_SIG0, _SIG1 = R.SIG_START, R.SIG_END
_BODY = R.HEADER_SIZE
_OPEN_REC = struct.Struct("<" + R.HEADER.format[1:] + R.OPEN_BODY.format[1:] + R.FILE_INFO.format[1:]).unpack_from
_OPEN_FI = R.HEADER_SIZE + R.OPEN_BODY.size
_SC_NAMES = R.SYSCALL_NAMES


class SlotReader:
    """Reads file_info slots (struct file_info + its variable bytes) out of a record."""

    def __init__(self, resolver: Resolver):
        self.resolver = resolver

    def slot(self, data, fi_off: int, var: int, pid: int, follow_last: bool) -> tuple[FileRef, bytes | None, int]:
        """Returns (file, root prefix to stat it through or None, offset after the slot's bytes)."""
        ino, dev, nlink, uid, gid, mode, pflags, str_len, path_len = _FI(data, fi_off)
        if not str_len and not pflags & R.PF_UNRESOLVED:  # walked from a struct file: the kernel's truth
            end = var + path_len
            if var == fi_off + _FI_SIZE:
                return KernelFile(bytes(data[fi_off:end])), None, end
            return KernelFile(bytes(data[fi_off:fi_off + _FI_SIZE]) + bytes(data[var:end])), None, end
        name = bytes(data[var:var + str_len])
        var += str_len
        base = bytes(data[var:var + path_len])
        path, flags, root = self.resolver.resolve(pid, base, pflags, name, follow_last)
        return FileRef(path, flags), root, var + path_len


def stat_into(f: FileRef, root: bytes | None, follow: bool) -> bool:
    """Identity of a path-string file, read after the syscall (racy; fd-based events never need it)."""
    if root is None or f.flags & R.PF_UNRESOLVED:
        return False
    try:
        st = os.stat(root + f.path) if follow else os.lstat(root + f.path)
    except OSError:
        return False
    f.set_stat(st)
    return True


class FileSensor(Sensor):
    name = "file"
    source = "file_sensor.c"
    tails = ("file_tails", ("tail__hazard", "tail__hazard_add"))  # T_HAZARD = 0, T_HAZARD_ADD = 1
    needs = {"O_FILE_FLAGS": Need(("file", "f_flags"), 4)}

    def __init__(self, resolver: Resolver):
        super().__init__()
        self.slots = SlotReader(resolver)
        self.decoders = {R.RK_OPEN: self.decode_open, R.RK_UNLINK: self.decode_unlink,
                         R.RK_RENAME: self.decode_rename, R.RK_CHMOD: self.decode_chmod,
                         R.RK_CHOWN: self.decode_chown}
        for kind in (R.RK_WRITE, R.RK_TRUNCATE, R.RK_MKDIR, R.RK_MKNOD, R.RK_SETXATTR, R.RK_MMAP,
                     R.RK_MEMFD_CREATE, R.RK_UMOUNT):
            self.decoders[kind] = self.decode_fileop
        for kind in (R.RK_LINK, R.RK_SYMLINK, R.RK_MOUNT):
            self.decoders[kind] = self.decode_fileop2

    @staticmethod
    def _event(data, off: int, kind: int, etype: int, sc: int) -> Event:
        hdr = _HDR(data, off)
        return Event(kind, etype, R.SYSCALL_NAMES.get(sc, str(sc)), hdr, bytes(data[off + _SIG0:off + _SIG1]))

    def decode_open(self, data, off: int, length: int) -> Event:
        # the hottest record: header, body and file slot in one unpack, the fd-based slot inline
        t = _OPEN_REC(data, off)
        sc, flags, fmode, pflags, str_len, path_len = t[17], t[19], t[22], t[30], t[31], t[32]
        ev = Event(R.RK_OPEN, T_CREATE if fmode & FMODE_CREATED else T_OPEN, _SC_NAMES.get(sc, "open"), t[:17],
                   bytes(data[off + _SIG0:off + _SIG1]))
        fi = off + _OPEN_FI
        if not str_len and not pflags & R.PF_UNRESOLVED:  # from the returned fd: the kernel's true path
            ev.file = KernelFile(bytes(data[fi:fi + _FI_SIZE + path_len]))
        else:
            follow = not flags & O_NOFOLLOW
            ev.file, root, _ = self.slots.slot(data, fi, fi + _FI_SIZE, t[7], follow)
            if ev.retval < 0 and ev.retval != -errno.ENOENT:
                stat_into(ev.file, root, follow)  # e.g. EACCES: the file exists, say which one
        ev.flags = flags
        ev.mode = t[20]
        if t[21]:
            ev.attrs = {"resolve": hex(t[21])}
        return ev

    def decode_unlink(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        sc, dfd, flags, _ = R.UNLINK_BODY.unpack_from(data, body)
        ev = self._event(data, off, R.RK_UNLINK, T_RMDIR if flags & AT_REMOVEDIR else T_UNLINK, sc)
        fi = body + R.UNLINK_BODY.size
        ev.file, root, _ = self.slots.slot(data, fi, fi + _FI_SIZE, ev.hdr[7], False)
        if ev.retval < 0:
            stat_into(ev.file, root, False)
        ev.flags = flags
        return ev

    def decode_rename(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        sc, flags, olddfd, newdfd = R.RENAME_BODY.unpack_from(data, body)
        ev = self._event(data, off, R.RK_RENAME, T_RENAME, sc)
        src_fi = body + R.RENAME_BODY.size
        dst_fi = src_fi + _FI_SIZE
        pid = ev.hdr[7]
        ev.file, src_root, var = self.slots.slot(data, src_fi, dst_fi + _FI_SIZE, pid, False)
        ev.target, dst_root, _ = self.slots.slot(data, dst_fi, var, pid, False)
        if ev.retval == 0 and not flags & RENAME_EXCHANGE:
            if stat_into(ev.target, dst_root, False):  # the renamed inode now lives at the destination
                _copy_identity(ev.file, ev.target)
        else:
            stat_into(ev.file, src_root, False)
            stat_into(ev.target, dst_root, False)
        ev.flags = flags
        return ev

    def decode_chmod(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        sc, dfd, mode, flags = R.CHMOD_BODY.unpack_from(data, body)
        ev = self._event(data, off, R.RK_CHMOD, T_CHMOD, sc)
        fi = body + R.CHMOD_BODY.size
        follow = not flags & AT_SYMLINK_NOFOLLOW
        ev.file, root, _ = self.slots.slot(data, fi, fi + _FI_SIZE, ev.hdr[7], follow)
        if ev.file.key is None:
            stat_into(ev.file, root, follow)
        ev.mode = mode
        ev.flags = flags
        return ev

    def decode_chown(self, data, off: int, length: int) -> Event:
        body = off + _BODY
        sc, dfd, uid, gid, flags, _ = R.CHOWN_BODY.unpack_from(data, body)
        ev = self._event(data, off, R.RK_CHOWN, T_CHOWN, sc)
        fi = body + R.CHOWN_BODY.size
        follow = not flags & AT_SYMLINK_NOFOLLOW
        ev.file, root, _ = self.slots.slot(data, fi, fi + _FI_SIZE, ev.hdr[7], follow)
        if ev.file.key is None:
            stat_into(ev.file, root, follow)
        ev.owner_uid = -1 if uid == 0xFFFFFFFF else uid
        ev.owner_gid = -1 if gid == 0xFFFFFFFF else gid
        ev.flags = flags
        return ev

    def decode_fileop(self, data, off: int, length: int) -> Event:
        """write (first per open), truncate, mkdir, mknod, setxattr, shared writable mmap, memfd_create,
        umount: one file (by fd or by path string), plus an extra string (xattr or memfd name)."""
        body = off + _BODY
        sc, dfd, flags, mode, aux, extra_len, _, _ = R.FILEOP_BODY.unpack_from(data, body)
        kind = data[off] | (data[off + 1] << 8)
        etype = FILEOP_TYPES[kind]
        ev = self._event(data, off, kind, TYPE_INDEX[etype], sc)
        fi = body + R.FILEOP_BODY.size
        follow = sc not in NOFOLLOW_SC and not (kind == R.RK_UMOUNT and flags & UMOUNT_NOFOLLOW) \
            and not (sc == R.SC["setxattrat"] and flags & AT_SYMLINK_NOFOLLOW)
        ev.file, root, var = self.slots.slot(data, fi, fi + _FI_SIZE, ev.hdr[7], follow)
        if ev.file.key is None:
            stat_into(ev.file, root, follow)
        ev.flags = flags
        ev.mode = mode
        if extra_len:
            ev.attrs = {"name": text(bytes(data[var:var + extra_len]))}
        if kind == R.RK_TRUNCATE:
            ev.attrs = {"length": str(aux)}
        elif kind == R.RK_MKNOD and aux:
            ev.attrs = {"rdev": f"{os.major(aux)}:{os.minor(aux)}"}
        return ev

    def decode_fileop2(self, data, off: int, length: int) -> Event:
        """link (file = the existing file, target = the new link), symlink (file = the link created,
        target = its text as written), mount and move_mount (file = the source, target = the mount point;
        attrs fs_type)."""
        body = off + _BODY
        sc, dfd, dfd2, extra_len, _, flags, aux = R.FILEOP2_BODY.unpack_from(data, body)
        kind = data[off] | (data[off + 1] << 8)
        ev = self._event(data, off, kind, TYPE_INDEX[FILEOP_TYPES[kind]], sc)
        src_fi = body + R.FILEOP2_BODY.size
        dst_fi = src_fi + _FI_SIZE
        pid = ev.hdr[7]
        var = dst_fi + _FI_SIZE
        src_raw = kind == R.RK_MOUNT and sc == R.SC["mount"]
        src_root = dst_root = None
        if src_raw:  # a device, a path or a name, as given; a bind mount's source is a path
            ev.file, var = _raw_slot(data, src_fi, var)
            if flags & MS_BIND and ev.file.path.startswith(b"/"):
                path, pflags, src_root = self.slots.resolver.resolve(pid, b"", R.PF_UNRESOLVED, ev.file.path, True)
                ev.file = FileRef(path, pflags)
        else:
            follow = kind == R.RK_LINK and bool(flags & AT_SYMLINK_FOLLOW)
            ev.file, src_root, var = self.slots.slot(data, src_fi, var, pid, follow)
        if kind == R.RK_SYMLINK:
            ev.target, var = _raw_slot(data, dst_fi, var)
        else:
            ev.target, dst_root, var = self.slots.slot(data, dst_fi, var, pid, kind == R.RK_MOUNT)
        if extra_len:
            ev.attrs = {"fs_type": text(bytes(data[var:var + extra_len]))}
        ev.flags = flags
        if ev.retval == 0:
            if kind == R.RK_LINK:  # both names are the one inode now
                if stat_into(ev.target, dst_root, False):
                    _copy_identity(ev.file, ev.target)
            elif kind == R.RK_SYMLINK:
                stat_into(ev.file, src_root, False)
            else:
                stat_into(ev.target, dst_root, True)
        elif kind != R.RK_SYMLINK and not src_raw:
            stat_into(ev.file, src_root, kind == R.RK_LINK and bool(flags & AT_SYMLINK_FOLLOW))
        return ev


def _raw_slot(data, fi_off: int, var: int) -> tuple[FileRef, int]:
    """A slot whose string is kept as written (a symlink's text, a mount source): never resolved."""
    str_len = _FI(data, fi_off)[7]
    return FileRef(bytes(data[var:var + str_len]), R.PF_UNRESOLVED), var + str_len


def _copy_identity(dst: FileRef, src: FileRef) -> None:
    dst.dev, dst.ino, dst.nlink, dst.mode, dst.uid, dst.gid = src.dev, src.ino, src.nlink, src.mode, src.uid, src.gid
