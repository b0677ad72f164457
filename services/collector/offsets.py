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
    "O_CRED_UID": Need(("cred", "uid"), 4),
    "O_CRED_GID": Need(("cred", "gid"), 4),
    "O_CRED_EUID": Need(("cred", "euid"), 4),
    "O_CRED_EGID": Need(("cred", "egid"), 4),
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
    "O_SB_DEV": Need(("super_block", "s_dev"), 4),
    "O_MM_EXE_FILE": Need(("mm_struct", "exe_file"), 8),
    "O_MM_ARG_START": Need(("mm_struct", "arg_start"), 8),
    "O_MM_ARG_END": Need(("mm_struct", "arg_end"), 8),
}


class OffsetError(RuntimeError):
    pass


def compute(btf: Btf | None = None, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """{macro: offset} for every NEEDS entry on the running kernel."""
    btf = btf or Btf.load()
    out: dict[str, int] = {}
    problems = []
    for macro, need in NEEDS.items():
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
