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

import os
from dataclasses import dataclass

from fimstream.collector.bpfsys import BPF_PROG_TYPE_LSM, EXIT, mov64_imm, prog_load

BPF_LSM_MAC = 27
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
    fd, why = prog_load(BPF_PROG_TYPE_LSM, mov64_imm(0, 0) + EXIT, expected_attach_type=BPF_LSM_MAC,
                        attach_btf_id=attach_btf_id)
    if fd < 0:
        return LsmProbe(False, why)
    os.close(fd)
    return LsmProbe(True, "ok")
