"""Is BPF-LSM usable on this kernel? Decided by trying: load the smallest LSM program there is
(`r0 = 0; exit`, BPF_PROG_TYPE_LSM attached to bpf_lsm_file_open) and see what the kernel says.

Reading CONFIG_BPF_LSM or /sys/kernel/security/lsm is not enough: this machine has CONFIG_BPF_LSM=y and
"bpf" in its LSM list, and still refuses the load with EPERM (as it refuses fentry). A loaded probe is
closed at once; it is never attached.

What the collector does with the answer (enforce.py): deny goes to fanotify either way today, and the
health info says why BPF-LSM is not used: "unavailable: EPERM" here; "available (not used: no LSM deny
programs are shipped yet)" on a kernel that accepts the probe, because an LSM program that could not be
loaded and tested here is not shipped.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_LSM = 29
BPF_LSM_MAC = 27
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_ATTR_SIZE = 144  # union bpf_attr up to attach_btf_id and a bit more; the kernel checks the tail is zero
HOOK = "bpf_lsm_file_open"


@dataclass(frozen=True)
class LsmProbe:
    available: bool
    reason: str  # "ok", or why not: "EPERM", "no BTF for bpf_lsm_file_open", ...

    def __str__(self) -> str:
        return "available" if self.available else f"unavailable: {self.reason}"


def probe_bpf_lsm(btf=None) -> LsmProbe:
    """Try to load a trivial BPF-LSM program; never raises."""
    try:
        if btf is None:
            from fimstream.collector.btf import Btf
            btf = Btf.load()
        attach_btf_id = btf.func_id(HOOK)
    except Exception as e:  # noqa: BLE001 - no BTF, no hook: not available, with the reason
        return LsmProbe(False, f"no BTF for {HOOK} ({e})")
    insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_LSM, 2, ctypes.addressof(insns), ctypes.addressof(license_))
    struct.pack_into("<I", attr, 68, BPF_LSM_MAC)  # expected_attach_type
    struct.pack_into("<I", attr, 108, attach_btf_id)
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(BPF_PROG_LOAD), buf, ctypes.c_long(_ATTR_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        return LsmProbe(False, errno.errorcode.get(err, str(err)))
    os.close(fd)
    return LsmProbe(True, "ok")
