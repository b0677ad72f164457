"""Direct kernel reads for the BPF programs: bpf_rdonly_cast instead of bpf_probe_read_kernel.

A bpf_probe_read_kernel costs ~30 ns here whatever it copies, and the file hooks made a dozen per syscall
(task -> files -> fdtable -> file -> dentry -> inode -> super_block, fs_struct, the parent dentry): most of
what the collector added to an openat+close. The kfunc bpf_rdonly_cast(addr, btf_id) (Linux 6.4+, every
program type) gives a read-only typed pointer instead: members become plain loads, made fault-safe by the
JIT and checked by the verifier against the running kernel's BTF, and the cast itself compiles to nothing.

bcc 0.26 cannot emit kfunc calls, so the C code (fimstream.h, KDIRECT) calls a marker helper number and
`patch()` rewrites each such call in the compiled module into the kfunc call before any program loads.
`probe()` first asks the kernel whether a tracepoint program may make that call at all (a 5-instruction
load); if not, the programs are built with KDIRECT=0 and read through probe-read windows as before.
Kernels that also accept `bpf_rdonly_cast(addr, 0)` (an untyped read-only pointer, any offset; 6.16+) get
KVOID=1: the few reads with no struct to name (an fd table slot) become plain loads too.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

from fimstream.collector.btf import Btf, BtfError
from fimstream.collector.bpfsys import BPF_PROG_TYPE_TRACEPOINT, EXIT, call_kfunc, insn, mov64_imm, prog_load

KFUNC = "bpf_rdonly_cast"
REFUSED = ("programs read kernel structs directly: the verifier checks each read against this kernel's BTF, "
           "so a refusal can mean a struct offset is wrong; direct_reads: false builds them with probe reads")
MARKER = 0x7FF0  # the helper number kcast_ calls in the C code: no helper has it
BPF_CALL = 0x85

# The tags the C code names objects by (KRD64(W_FILE, ...), READ_WIN(buf, W_DENTRY, ...)) -> kernel struct.
TYPES = {
    "W_TASK": "task_struct", "W_CRED": "cred", "W_FILE": "file", "W_FS": "fs_struct", "W_FDT": "fdtable",
    "W_DENTRY": "dentry", "W_MOUNT": "mount", "W_INODE": "inode", "W_FILES": "files_struct",
    "W_SB": "super_block", "W_VFSMOUNT": "vfsmount", "W_NSPROXY": "nsproxy", "W_MNT_NS": "mnt_namespace",
}


@dataclass(frozen=True)
class DirectReads:
    enabled: bool
    reason: str  # "ok", "disabled by configuration", or why the kernel said no
    kfunc_id: int = 0
    defines: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.enabled:
            return f"probe reads ({self.reason})"
        return "direct (bpf_rdonly_cast" + (", untyped too)" if self.defines.get("KVOID") else ")")


def _accepts(code: bytes) -> tuple[bool, str]:
    fd, why = prog_load(BPF_PROG_TYPE_TRACEPOINT, code, log_size=4096)
    if fd >= 0:
        os.close(fd)
    return fd >= 0, why


def probe(btf: Btf, want: bool = True) -> DirectReads:
    """Decide how the programs read kernel memory; never raises."""
    off = {"KDIRECT": 0, "KVOID": 0, "KCAST_MARKER": MARKER}
    if not want:
        return DirectReads(False, "disabled by configuration (direct_reads: false)", defines=off)
    try:
        kfunc_id = btf.func_id(KFUNC)
        ids = {f"BTF_{tag}": btf.find(name) for tag, name in TYPES.items()}
    except BtfError as e:
        return DirectReads(False, str(e), defines=off)
    ok, why = _accepts(mov64_imm(1, 0) + mov64_imm(2, ids["BTF_W_TASK"]) + call_kfunc(kfunc_id) + mov64_imm(0, 0) + EXIT)
    if not ok:
        return DirectReads(False, f"the kernel refused {KFUNC} in a tracepoint program: {why}", defines=off)
    # untyped: cast with btf_id 0, then a load at an offset no struct was named for (r0 = *(u64 *)(r0 + 8))
    void, _ = _accepts(mov64_imm(1, 0) + mov64_imm(2, 0) + call_kfunc(kfunc_id) + insn(0x79, 0, 0, 8) +
                       mov64_imm(0, 0) + EXIT)
    return DirectReads(True, "ok", kfunc_id, {"KDIRECT": 1, "KVOID": int(void), "KCAST_MARKER": MARKER, **ids})


def patch(bpf, kfunc_id: int) -> int:
    """Rewrite every marker call in the compiled (not yet loaded) module into the kfunc call; returns how
    many. The instructions live in bcc's module memory until a program is loaded from them."""
    from bcc.libbcc import lib

    patched = 0
    for i in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, i)
        start = lib.bpf_function_start(bpf.module, name)
        size = lib.bpf_function_size(bpf.module, name)
        if not start or not size:
            continue
        code = (ctypes.c_uint8 * size).from_address(start)
        for pos in range(0, size - 7, 8):
            if code[pos] != BPF_CALL or code[pos + 1] >> 4:
                continue
            if int.from_bytes(bytes(code[pos + 4:pos + 8]), "little", signed=True) != MARKER:
                continue
            code[pos + 1] = (code[pos + 1] & 0x0F) | (2 << 4)  # src_reg = BPF_PSEUDO_KFUNC_CALL
            code[pos + 4:pos + 8] = (ctypes.c_uint8 * 4)(*kfunc_id.to_bytes(4, "little"))
            patched += 1
    return patched
