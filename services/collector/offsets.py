"""Kernel struct offsets for the BPF programs, from BTF: the O_* macros bpf/fimstream.h reads through.

Each entry names a member path (anonymous members are descended by btf.Btf.offset) and, where the
program reads it with a fixed width, the size it must have on this kernel; a mismatch stops the load
with a clear message instead of reading garbage. `overrides` exists for the self-check test, which
proves that a wrong offset is caught at start.
"""
from __future__ import annotations

from dataclasses import dataclass

from fimstream.collector.btf import Btf, BtfError


@dataclass(frozen=True)
class Need:
    path: tuple[str, ...]  # struct name, then member names
    size: int | None = None  # expected byte size of the member (None: any; pointers are 8)
    optional: bool = False  # absent on some kernels (CONFIG_AUDIT): the macro is -1


def _ns_needs() -> dict[str, Need]:
    """nsproxy members and the inode number of each namespace (time namespaces are optional: 5.6+)."""
    out = {}
    for macro, member, struct_name, optional in (
            ("UTS", "uts_ns", "uts_namespace", False), ("IPC", "ipc_ns", "ipc_namespace", False),
            ("PID", "pid_ns_for_children", "pid_namespace", False), ("NET", "net_ns", "net", False),
            ("TIME", "time_ns_for_children", "time_namespace", True),
            ("CGROUP", "cgroup_ns", "cgroup_namespace", False)):
        out[f"O_NSPROXY_{member.upper()}"] = Need(("nsproxy", member), 8, optional)
        out[f"O_{macro}_NS_INUM"] = Need((struct_name, "ns", "inum"), 4, optional)
    return out


NEEDS: dict[str, Need] = {
    "O_TASK_REAL_PARENT": Need(("task_struct", "real_parent"), 8),
    "O_TASK_GROUP_LEADER": Need(("task_struct", "group_leader"), 8),
    "O_TASK_TGID": Need(("task_struct", "tgid"), 4),
    "O_TASK_PID": Need(("task_struct", "pid"), 4),
    "O_TASK_FLAGS": Need(("task_struct", "flags"), 4),
    "O_TASK_CRED": Need(("task_struct", "cred"), 8),
    "O_TASK_LOGINUID": Need(("task_struct", "loginuid"), 4, optional=True),
    "O_TASK_SESSIONID": Need(("task_struct", "sessionid"), 4, optional=True),
    "O_TASK_START_BOOTTIME": Need(("task_struct", "start_boottime"), 8),
    "O_TASK_FILES": Need(("task_struct", "files"), 8),
    "O_TASK_FS": Need(("task_struct", "fs"), 8),
    "O_TASK_MM": Need(("task_struct", "mm"), 8),
    "O_TASK_EXIT_CODE": Need(("task_struct", "exit_code"), 4),
    "O_TASK_NSPROXY": Need(("task_struct", "nsproxy"), 8),
    "O_NSPROXY_MNT_NS": Need(("nsproxy", "mnt_ns"), 8),
    "O_MNT_NS_INUM": Need(("mnt_namespace", "ns", "inum"), 4),
    "O_CRED_UID": Need(("cred", "uid"), 4),
    "O_CRED_GID": Need(("cred", "gid"), 4),
    "O_CRED_EUID": Need(("cred", "euid"), 4),
    "O_CRED_EGID": Need(("cred", "egid"), 4),
    # the rest of a thread's credentials and its namespaces: the snapshot a credential change is compared
    # with (struct thread_snap, fimstream.h), taken at fork and exec, read by the privilege sensor
    "O_CRED_SUID": Need(("cred", "suid"), 4), "O_CRED_FSUID": Need(("cred", "fsuid"), 4),
    "O_CRED_SGID": Need(("cred", "sgid"), 4), "O_CRED_FSGID": Need(("cred", "fsgid"), 4),
    "O_CRED_CAP_INHERITABLE": Need(("cred", "cap_inheritable"), 8),
    "O_CRED_CAP_PERMITTED": Need(("cred", "cap_permitted"), 8),
    "O_CRED_CAP_EFFECTIVE": Need(("cred", "cap_effective"), 8),
    "O_CRED_USER_NS": Need(("cred", "user_ns"), 8),
    "O_USER_NS_INUM": Need(("user_namespace", "ns", "inum"), 4),
    "O_FILES_FDT": Need(("files_struct", "fdt"), 8),
    "O_FDT_MAX_FDS": Need(("fdtable", "max_fds"), 4),
    "O_FDT_FD": Need(("fdtable", "fd"), 8),
    "O_FILE_MODE": Need(("file", "f_mode"), 4),
    "O_FILE_PATH_MNT": Need(("file", "f_path", "mnt"), 8),
    "O_FILE_PATH_DENTRY": Need(("file", "f_path", "dentry"), 8),
    "O_PATH_MNT": Need(("path", "mnt"), 8),
    "O_PATH_DENTRY": Need(("path", "dentry"), 8),
    "O_FS_ROOT": Need(("fs_struct", "root")),
    "O_FS_PWD": Need(("fs_struct", "pwd")),
    "O_DENTRY_PARENT": Need(("dentry", "d_parent"), 8),
    "O_DENTRY_NAME_LEN": Need(("dentry", "d_name", "len"), 4),
    "O_DENTRY_NAME_NAME": Need(("dentry", "d_name", "name"), 8),
    "O_DENTRY_INODE": Need(("dentry", "d_inode"), 8),
    "O_DENTRY_HASH_PPREV": Need(("dentry", "d_hash", "pprev"), 8),
    "O_MOUNT_MNT": Need(("mount", "mnt")),
    "O_MOUNT_PARENT": Need(("mount", "mnt_parent"), 8),
    "O_MOUNT_MOUNTPOINT": Need(("mount", "mnt_mountpoint"), 8),
    "O_VFSMOUNT_ROOT": Need(("vfsmount", "mnt_root"), 8),
    "O_INODE_MODE": Need(("inode", "i_mode"), 2),
    "O_INODE_UID": Need(("inode", "i_uid"), 4),
    "O_INODE_GID": Need(("inode", "i_gid"), 4),
    "O_INODE_NLINK": Need(("inode", "i_nlink"), 4),
    "O_INODE_INO": Need(("inode", "i_ino"), 8),
    "O_INODE_SB": Need(("inode", "i_sb"), 8),
    "O_INODE_GENERATION": Need(("inode", "i_generation"), 4),
    "O_SB_DEV": Need(("super_block", "s_dev"), 4),
    "O_SB_MAGIC": Need(("super_block", "s_magic"), 8),
    "O_MM_EXE_FILE": Need(("mm_struct", "exe_file"), 8),
    "O_MM_ARG_START": Need(("mm_struct", "arg_start"), 8),
    "O_MM_ARG_END": Need(("mm_struct", "arg_end"), 8),
    **_ns_needs(),
}


# Members a program needs from one object are fetched with ONE bpf_probe_read_kernel of the window that
# covers them (W_<NAME>_START/_LEN), then picked out of the copy: a probe read costs ~35 ns whatever its
# size up to hundreds of bytes, so 10 reads of a task_struct cost ~350 ns and one 824-byte read ~130 ns.
# Each member: (macros whose sum is its offset, size). `limit` is the buffer the program reserves.
WINDOWS: dict[str, tuple[int, list[tuple[tuple[str, ...], int]]]] = {
    "TASK": (2048, [(("O_TASK_REAL_PARENT",), 8), (("O_TASK_GROUP_LEADER",), 8), (("O_TASK_CRED",), 8),
                    (("O_TASK_START_BOOTTIME",), 8), (("O_TASK_FILES",), 8), (("O_TASK_FS",), 8),
                    (("O_TASK_MM",), 8), (("O_TASK_EXIT_CODE",), 4), (("O_TASK_NSPROXY",), 8),
                    (("O_TASK_LOGINUID",), 4),
                    (("O_TASK_SESSIONID",), 4)]),
    "CRED": (128, [(("O_CRED_UID",), 4), (("O_CRED_GID",), 4), (("O_CRED_EUID",), 4), (("O_CRED_EGID",), 4)]),
    "FILE": (128, [(("O_FILE_MODE",), 4), (("O_FILE_PATH_MNT",), 8), (("O_FILE_PATH_DENTRY",), 8)]),
    "FS": (128, [(("O_FS_ROOT", "O_PATH_MNT"), 8), (("O_FS_ROOT", "O_PATH_DENTRY"), 8),
                 (("O_FS_PWD", "O_PATH_MNT"), 8), (("O_FS_PWD", "O_PATH_DENTRY"), 8)]),
    "FDT": (64, [(("O_FDT_MAX_FDS",), 4), (("O_FDT_FD",), 8)]),
    "DENTRY": (128, [(("O_DENTRY_HASH_PPREV",), 8), (("O_DENTRY_PARENT",), 8), (("O_DENTRY_NAME_LEN",), 4),
                     (("O_DENTRY_NAME_NAME",), 8), (("O_DENTRY_INODE",), 8)]),
    "MOUNT": (128, [(("O_MOUNT_PARENT",), 8), (("O_MOUNT_MOUNTPOINT",), 8), (("O_MOUNT_MNT", "O_VFSMOUNT_ROOT"), 8)]),
    "INODE": (128, [(("O_INODE_MODE",), 2), (("O_INODE_UID",), 4), (("O_INODE_GID",), 4), (("O_INODE_SB",), 8),
                    (("O_INODE_INO",), 8), (("O_INODE_NLINK",), 4)]),
}


class OffsetError(RuntimeError):
    pass


# Where a syscall's arguments sit in the registers saved at entry (struct pt_regs), per architecture: a
# sys_exit hook reads them there (SYSARG in fimstream.h) instead of a sys_enter hook stashing them.
# aarch64 (not run here): x0 is overwritten by the return value, orig_x0 keeps the first argument.
SYSCALL_ARG_REGS = {"x86_64": ("di", "si", "dx", "r10", "r8", "r9")}


def syscall_args(btf: Btf, machine: str | None = None) -> dict[str, int]:
    """O_SYSARG0..O_SYSARG5: offsets in struct pt_regs of the syscall arguments on this machine."""
    import os

    machine = machine or os.uname().machine
    if machine == "aarch64":
        regs = btf.offset("pt_regs", "regs").offset  # u64 regs[31] (inside user_pt_regs)
        return {"O_SYSARG0": btf.offset("pt_regs", "orig_x0").offset,
                **{f"O_SYSARG{i}": regs + 8 * i for i in range(1, 6)}}
    names = SYSCALL_ARG_REGS.get(machine)
    if names is None:
        raise OffsetError(f"syscall argument registers are not known for {machine}")
    return {f"O_SYSARG{i}": btf.offset("pt_regs", name).offset for i, name in enumerate(names)}


def windows(offsets: dict[str, int]) -> dict[str, int]:
    """W_<NAME>_START (8-aligned, so every member stays naturally aligned in the copy) and W_<NAME>_LEN."""
    out = {}
    for name, (limit, members) in WINDOWS.items():
        spans = [(sum(offsets[m] for m in macros), size) for macros, size in members
                 if all(offsets[m] >= 0 for m in macros)]
        start = min(off for off, _ in spans) & ~7
        length = (max(off + size for off, size in spans) - start + 7) & ~7
        if length > limit:
            raise OffsetError(f"the {name} members the collector reads span {length} bytes on this kernel "
                              f"(the program reserves {limit}): this layout needs a new window split")
        out[f"W_{name}_START"], out[f"W_{name}_LEN"] = start, length
    return out


def compute(btf: Btf | None = None, overrides: dict[str, int] | None = None,
            needs: dict[str, Need] | None = None) -> dict[str, int]:
    """{macro: offset} for every entry of `needs` (default: NEEDS, what fimstream.h reads) on the running
    kernel. Sensors pass their own table for the members only they read (Sensor.needs)."""
    btf = btf or Btf.load()
    needs = NEEDS if needs is None else needs
    out: dict[str, int] = {}
    problems = []
    for macro, need in needs.items():
        try:
            member = btf.offset(*need.path)
        except BtfError as e:
            if need.optional:
                out[macro] = -1
                continue
            problems.append(f"{macro} ({'.'.join(need.path)}): {e}")
            continue
        if member.bit_size:
            problems.append(f"{macro} ({'.'.join(need.path)}) is a bitfield")
        elif need.size is not None and member.size != need.size:
            problems.append(f"{macro} ({'.'.join(need.path)}) is {member.size} bytes, the program reads {need.size}")
        out[macro] = member.offset
    if problems:
        raise OffsetError("kernel BTF does not have what the collector needs:\n  " + "\n  ".join(problems))
    for macro, value in (overrides or {}).items():
        if macro not in out:
            raise KeyError(f"unknown offset macro {macro}")
        out[macro] = value
    return out
