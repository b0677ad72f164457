"""Privilege sensor, userspace half: decodes bpf/priv_sensor.c's records into setuid/setgid/setgroups/capset/
unshare/setns events (RawEvent.cred = the kernel's credentials before and after the call) and chroot
records, which also move the process's root in the process cache."""
from __future__ import annotations

import struct

from fimstream.collector import records as R
from fimstream.collector.event import TYPE_INDEX, CredInfo, Event
from fimstream.collector.file_sensor import SlotReader
from fimstream.collector.offsets import Need
from fimstream.collector.paths import Resolver
from fimstream.collector.proctable import ProcTable
from fimstream.collector.sensor import Sensor

CRED_SNAP = struct.Struct("<8I3Q")  # uid euid suid fsuid gid egid sgid fsgid, cap_inh cap_perm cap_eff
PRIV_NS, PRIV_GROUPS = 8, 32
PRIV_BODY = struct.Struct(f"<IIII3Q{CRED_SNAP.size}s{CRED_SNAP.size}s{PRIV_NS}I{PRIV_NS}I{PRIV_GROUPS}I")
# then the chroot file_info slot, then its bytes
assert PRIV_BODY.size == 16 + 24 + 112 + 64 + 128
# priv_body.pflags: the thread had no snapshot (old state from the process cache, else unknown); chroot of a
# thread seeded from /proc: the new root is named from its mount namespace's root
PRIV_OLD_UNKNOWN, PRIV_ROOT_UNKNOWN = 1, 2

# namespace order of the ns arrays, with the CLONE_NEW* flag of each
NAMESPACES = (("mnt", 0x00020000), ("uts", 0x04000000), ("ipc", 0x08000000), ("pid", 0x20000000),
              ("net", 0x40000000), ("time", 0x00000080), ("cgroup", 0x02000000), ("user", 0x10000000))
ARG_NAMES = {"setuid": ("uid",), "setreuid": ("ruid", "euid"), "setresuid": ("ruid", "euid", "suid"),
             "setfsuid": ("fsuid",), "setgid": ("gid",), "setregid": ("rgid", "egid"),
             "setresgid": ("rgid", "egid", "sgid"), "setfsgid": ("fsgid",)}
TYPES = {R.RK_SETUID: "setuid", R.RK_SETGID: "setgid", R.RK_SETGROUPS: "setgroups", R.RK_CAPSET: "capset",
         R.RK_UNSHARE: "unshare", R.RK_SETNS: "setns", R.RK_CHROOT: "unknown"}  # the schema has no chroot type
_HDR = R.HEADER.unpack_from
_BODY = R.HEADER_SIZE
_FI_SIZE = R.FILE_INFO.size


class PrivSensor(Sensor):
    name = "privilege"
    source = "priv_sensor.c"
    needs = {
        "O_CRED_GROUP_INFO": Need(("cred", "group_info"), 8),
        "O_GROUP_INFO_NGROUPS": Need(("group_info", "ngroups"), 4),
        "O_GROUP_INFO_GID": Need(("group_info", "gid")),
    }

    def __init__(self, procs: ProcTable, resolver: Resolver, boot_ns: int = 0):
        super().__init__()
        self.procs = procs
        self.slots = SlotReader(resolver)
        self.boot_ns = str(boot_ns)
        self.decoders = {kind: self.decode for kind in TYPES}

    def decode(self, data, off: int, length: int) -> Event:
        hdr = _HDR(data, off)
        kind = hdr[0]
        body = off + _BODY
        sc, ngroups, pflags, _, a0, a1, a2, old_raw, new_raw, *rest = PRIV_BODY.unpack_from(data, body)
        ns_old, ns_new, groups = rest[:PRIV_NS], rest[PRIV_NS:2 * PRIV_NS], rest[2 * PRIV_NS:]
        syscall = R.SYSCALL_NAMES.get(sc, str(sc))
        ev = Event(kind, TYPE_INDEX[TYPES[kind]], syscall, hdr, bytes(data[off + R.SIG_START:off + R.SIG_END]))
        old, new = CRED_SNAP.unpack(old_raw), CRED_SNAP.unpack(new_raw)
        attrs = {"boot_ns": self.boot_ns}
        if pflags & PRIV_OLD_UNKNOWN:
            old, attrs["old_state"] = self._old_from_cache(hdr[7], new)
            ns_old = ns_new  # nothing to compare with: no namespace is reported as changed
        ev.cred = CredInfo((old[0], old[1], old[4], old[5]), (new[0], new[1], new[4], new[5]), old[10], new[10])
        args = (a0, a1, a2)
        if syscall in ARG_NAMES:  # what was asked (-1: leave unchanged); cred says what happened
            attrs["requested"] = " ".join(f"{name}={_s32(v)}" for name, v in zip(ARG_NAMES[syscall], args))
            if syscall in ("setfsuid", "setfsgid"):  # these return the old id and never fail
                i = 3 if syscall == "setfsuid" else 7
                attrs["old_fs" + syscall[-3:]], attrs["fs" + syscall[-3:]] = str(old[i]), str(new[i])
            else:  # saved ids: what setres*id and a later setuid(saved) can bring back
                attrs["old_s" + syscall[-3:]], attrs["s" + syscall[-3:]] = (
                    (str(old[2]), str(new[2])) if kind == R.RK_SETUID else (str(old[6]), str(new[6])))
        elif kind == R.RK_SETGROUPS:
            ev.flags = _s32(a0)  # the size asked for
            if ev.retval == 0:
                attrs["groups"] = ",".join(str(g) for g in groups[:min(ngroups, PRIV_GROUPS)])
                if ngroups > PRIV_GROUPS:
                    attrs["groups_total"] = str(ngroups)
        elif kind == R.RK_CAPSET:
            for name, i in (("permitted", 9), ("inheritable", 8)):
                if old[i] != new[i]:
                    attrs[f"old_{name}"], attrs[name] = hex(old[i]), hex(new[i])
        elif kind in (R.RK_UNSHARE, R.RK_SETNS):
            changed = [(name, flag, n) for (name, flag), o, n in zip(NAMESPACES, ns_old, ns_new) if o != n]
            changed_flags = 0
            for name, flag, n in changed:
                attrs[f"{name}_ns"] = str(n)
                changed_flags |= flag
            attrs["namespaces"] = ",".join(name for name, _, _ in changed)
            if kind == R.RK_UNSHARE:
                ev.flags = a0
            else:  # nstype 0 (any) or a pidfd: the kinds that changed say what it was
                ev.flags = (a1 & 0xFFFFFFFF) or changed_flags
                attrs["fd"] = str(_s32(a0))
        elif kind == R.RK_CHROOT:
            fi = body + PRIV_BODY.size
            ev.file, _, _ = self.slots.slot(data, fi, fi + _FI_SIZE, hdr[7], True)
            if pflags & PRIV_ROOT_UNKNOWN and self.procs.get(hdr[7], hdr).root_shared:
                ev.file.flags &= ~R.PF_OUTSIDE_ROOT  # its old root was the namespace's, which the walk reached
            if ev.retval == 0:
                self.procs.on_chroot(hdr[7], hdr, ev.file.path, ev.file.flags)
        ev.attrs = attrs
        return ev

    def _old_from_cache(self, pid: int, new: tuple) -> tuple[tuple, str]:
        """The state before a call the kernel had no snapshot for: the process cache's ids (what its last
        record said), the rest as after the call; or, without an entry, the state after the call."""
        info = self.procs.procs.get(pid)
        if info is None:
            return new, "unknown"
        old = list(new)
        old[0], old[1], old[4], old[5] = info.uid, info.euid, info.gid, info.egid
        return tuple(old), "process_cache"


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
