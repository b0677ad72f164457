"""The bpf(2) system call for the few loads the collector makes without bcc: capability probes (is BPF-LSM
allowed, may a tracepoint program call a kfunc), each a few hand-assembled instructions loaded, judged by
the kernel's answer and closed at once."""
from __future__ import annotations

import ctypes
import errno
import os
import struct

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_LSM = 29
BPF_PSEUDO_KFUNC_CALL = 2
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_ATTR_SIZE = 144  # union bpf_attr up to attach_btf_id and a bit more; the kernel checks the tail is zero


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    return insn(0xB7, dst, imm=imm)


def call_kfunc(btf_id: int) -> bytes:
    return insn(0x85, src=BPF_PSEUDO_KFUNC_CALL, imm=btf_id)


EXIT = insn(0x95)


def prog_load(prog_type: int, code: bytes, *, expected_attach_type: int = 0, attach_btf_id: int = 0,
              log_size: int = 0) -> tuple[int, str]:
    """Load a program: (fd, "") or (-1, "EPERM: <verifier log>"). The caller closes the fd."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns), ctypes.addressof(license_))
    if log is not None:
        struct.pack_into("<IIQ", attr, 24, 1, log_size, ctypes.addressof(log))
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(BPF_PROG_LOAD), buf, ctypes.c_long(_ATTR_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        why = errno.errorcode.get(err, str(err))
        text = log.value.decode(errors="replace").strip().splitlines() if log is not None else []
        return -1, f"{why}: {text[-1]}" if text else why
    return fd, ""
