"""The ring-buffer record format, defined once here and compiled into the BPF side as -D macros.

Every record: a 96-byte header (struct rec_hdr in bpf/fimstream.h), a fixed body per record kind,
then a variable part holding strings and paths whose lengths are in the body:

    rec_hdr   kind u16, hflags u16, reserved u32 | ktime u64 | retval s64 | start_time u64 | cgroup_id u64 |
              pid, tid, ppid, uid, gid, euid, egid, auid, sessionid u32 | comm [16] | pad u32
    file_info ino u64 | dev u32, nlink u32 | uid u32, gid u32 | mode u16, path_flags u16,
              str_len u16, path_len u16                      (each slot's variable part: str, then path)

Kinds are global (RK_*): a sensor owns the kinds it decodes. Syscall codes (SC_*) are portable names
for the hook, independent of the architecture's syscall numbers.
"""
from __future__ import annotations

import struct

# ------------------------------------------------------------------------------------- record kinds
RK_OPEN, RK_UNLINK, RK_RENAME, RK_CHMOD, RK_CHOWN, RK_EXEC, RK_FORK, RK_EXIT = range(1, 9)
# file sensor, phase 2: new record kinds, plus counter-only rows (create and rmdir records are RK_OPEN and
# RK_UNLINK records; the file sensor counts and filters them under their own event type)
(RK_CREATE, RK_RMDIR, RK_WRITE, RK_TRUNCATE, RK_LINK, RK_SYMLINK, RK_MKDIR, RK_MKNOD, RK_SETXATTR, RK_MMAP,
 RK_MEMFD_CREATE, RK_MOUNT, RK_UMOUNT) = range(9, 22)
FILE_KIND_NAMES = {RK_CREATE: "create", RK_RMDIR: "rmdir", RK_WRITE: "write", RK_TRUNCATE: "truncate",
                   RK_LINK: "link", RK_SYMLINK: "symlink", RK_MKDIR: "mkdir", RK_MKNOD: "mknod",
                   RK_SETXATTR: "setxattr", RK_MMAP: "mmap", RK_MEMFD_CREATE: "memfd_create", RK_MOUNT: "mount",
                   RK_UMOUNT: "umount"}
# network, privilege and io_uring sensors: a block of their own (22..31 stay free for file kinds)
RK_CONNECT, RK_ACCEPT, RK_BIND = 32, 33, 34
RK_SETUID, RK_SETGID, RK_SETGROUPS, RK_CAPSET, RK_UNSHARE, RK_SETNS, RK_CHROOT = range(35, 42)
RK_URING_OPEN, RK_URING_RW, RK_URING_PATH = 42, 43, 44
RK_CGROUP_ATTACH = 45  # process sensor: a task moved to another cgroup (the cache follows; no event)
RK_ENFORCE = 60  # enforcement sensor: a kill the kernel carried out (enforce_sensor.c)
NKINDS = 64  # the counters map holds NKINDS rows: room for more kinds without resizing it
KIND_NAMES = {RK_OPEN: "open", RK_UNLINK: "unlink", RK_RENAME: "rename", RK_CHMOD: "chmod",
              RK_CHOWN: "chown", RK_EXEC: "exec", RK_FORK: "fork", RK_EXIT: "exit",
              RK_CONNECT: "connect", RK_ACCEPT: "accept", RK_BIND: "bind",
              RK_SETUID: "setuid", RK_SETGID: "setgid", RK_SETGROUPS: "setgroups", RK_CAPSET: "capset",
              RK_UNSHARE: "unshare", RK_SETNS: "setns", RK_CHROOT: "chroot",
              RK_URING_OPEN: "uring_open", RK_URING_RW: "uring_rw", RK_URING_PATH: "uring_path", RK_ENFORCE: "enforce",
              RK_CGROUP_ATTACH: "cgroup_attach",
              **FILE_KIND_NAMES}
assert max(KIND_NAMES) < NKINDS

# per-kind in-kernel counters: seen = filtered + (approved/discarded: phase 2) + emitted + lost
C_SEEN, C_FILTERED, C_APPROVED, C_DISCARDED, C_EMITTED, C_LOST = range(6)
NCOUNTERS = 8
COUNTER_NAMES = ("seen", "filtered", "approved", "discarded", "emitted", "lost")

# ------------------------------------------------------------------------------------ syscall codes
SYSCALLS = ("openat", "openat2", "open", "creat", "unlinkat", "unlink", "rmdir", "renameat2", "renameat",
            "rename", "fchmodat", "fchmodat2", "chmod", "fchmod", "fchownat", "chown", "lchown", "fchown",
            "execve", "execveat",
            "connect", "accept", "accept4", "bind",
            "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
            "setgroups", "capset", "unshare", "setns", "chroot",
            "io_uring:openat", "io_uring:openat2",
            "write", "writev", "pwrite64", "pwritev", "pwritev2", "truncate", "ftruncate", "link", "linkat",
            "symlink", "symlinkat", "mkdir", "mkdirat", "mknod", "mknodat", "setxattr", "lsetxattr", "fsetxattr",
            "setxattrat", "mmap", "memfd_create", "mount", "umount2", "move_mount")
SC = {name: i + 1 for i, name in enumerate(SYSCALLS)}
SYSCALL_NAMES = {i + 1: name for i, name in enumerate(SYSCALLS)}

# ------------------------------------------------------------------------------- File.path_flags bits
PF_TRUNCATED = 1  # longer than the buffer
PF_DEPTH = 2  # deeper than the walk bound: the path holds the deepest MAX_DEPTH components
PF_UNRESOLVED = 4  # the caller's string (joined to the true base directory), not a verified true path
PF_DELETED = 8  # unlinked while open
PF_OUTSIDE_ROOT = 16  # not under the process root (chroot escape, detached mount, pseudo fs)

# ------------------------------------------------------------------------------------------- sizes
EV_SZ = 20480  # per-CPU record assembly area (fixed part + variable part)
EV_VAR_MASK = 16383  # a variable-part write starts below this
PATH_SZ = 8192
PATH_MASK = 4095
PATH_END = 4095  # the walked path ends here: at most 4095 bytes (PATH_MAX without its NUL)
STR_MAX = 4096  # caller strings (PATH_MAX with its NUL)
STR_MASK = 4095
NAME_MAX = 255
ARGS_MAX = 4095
ARGS_MASK = 4095
MAX_DEPTH = 64  # path components (and mount crossings) walked per path

# --------------------------------------------------------------------------------------- structs
HEADER = struct.Struct("<HHIQqQQIIIIIIIII16s4x")
HEADER_SIZE = HEADER.size
FILE_INFO = struct.Struct("<QIIIIHHHH")
assert HEADER_SIZE == 96 and FILE_INFO.size == 32
# the part of the header that identifies one thread's process context (start_time .. comm): the
# encoder keys its pre-encoded Process blocks by these bytes
SIG_START, SIG_END = 24, 92

OPEN_BODY = struct.Struct("<IiQQQII")  # sc, dfd, flags, mode, resolve, fmode, pad; then file_info
UNLINK_BODY = struct.Struct("<IiII")  # sc, dfd, flags, pad
RENAME_BODY = struct.Struct("<IIii")  # sc, flags, olddfd, newdfd; then src, dst
CHMOD_BODY = struct.Struct("<IiII")  # sc, dfd, mode, flags
CHOWN_BODY = struct.Struct("<IiIIII")  # sc, dfd, uid, gid, flags, pad
EXEC_BODY = struct.Struct("<HHHHIiII4IQQqq")  # after exe file_info: filename_len, args_len, args_flags, pad,
#   sc, dfd, mnt_ns, xflags, old uid/euid/gid/egid, old_caps, new_caps, mtime_ns, ctime_ns
FILEOP_BODY = struct.Struct("<IiQQQHHI")  # sc, dfd, flags, mode, aux, extra_len, pad, pad; then file_info;
#                                          variable: file bytes, extra string (xattr name, memfd name)
FILEOP2_BODY = struct.Struct("<IiiHHQQ")  # sc, dfd, dfd2, extra_len, pad, flags, aux; then file_info src, dst;
#                                          variable: src bytes, dst bytes, extra string (fs type)
FORK_BODY = struct.Struct("<IIQ")  # child_pid, pad, child_start_time
EXIT_BODY = struct.Struct("<iI")  # exit_code, pad
CGROUP_BODY = struct.Struct("<IiQHHI")  # pid, hierarchy, cgroup_id, path_len, pad, pad; variable: the path


WAKE_EVERY = 64  # records per CPU between reader wake-ups under load
WAKE_QUIET_S = 0.01  # the first record after this long without a wake-up wakes the reader (fimstream.h emit)
SAFETY_POLL_S = 1.0  # the reader drains this often whatever happens (Collector.poll)


PID_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit: the ignore bitmap covers every pid
IGNORE_WORDS = PID_LIMIT // 64


# Threads whose credentials/namespaces snapshot the kernel keeps (fimstream.h thread_snaps, allocated as
# threads appear: ~150 bytes each); beyond it a credential change is reported with its old state unknown.
THREAD_SNAPS = 1 << 16


def c_defines(max_depth: int = MAX_DEPTH, ringbuf_bytes: int = 32 << 20, inflight_max: int = 16384,
              wake_every: int = WAKE_EVERY, thread_snaps: int = THREAD_SNAPS) -> dict[str, int]:
    """Every constant the C side needs, as -D macros (offsets come from offsets.compute)."""
    page = 4096
    if ringbuf_bytes & (ringbuf_bytes - 1) or ringbuf_bytes < page:
        raise ValueError("the ring buffer size must be a power of two of at least one page")
    out = {f"RK_{name.upper()}": kind for kind, name in KIND_NAMES.items()}
    out.update({f"SC_{name.upper().replace(':', '_')}": code for name, code in SC.items()})
    out.update({f"C_{name.upper()}": i for i, name in enumerate(COUNTER_NAMES)})
    out.update(NKINDS=NKINDS, NCOUNTERS=NCOUNTERS,
               PF_TRUNCATED=PF_TRUNCATED, PF_DEPTH=PF_DEPTH, PF_UNRESOLVED=PF_UNRESOLVED,
               PF_DELETED=PF_DELETED, PF_OUTSIDE_ROOT=PF_OUTSIDE_ROOT,
               EV_SZ=EV_SZ, EV_VAR_MASK=EV_VAR_MASK, PATH_SZ=PATH_SZ, PATH_MASK=PATH_MASK, PATH_END=PATH_END,
               STR_MAX=STR_MAX, STR_MASK=STR_MASK, NAME_MAX_=NAME_MAX, ARGS_MAX=ARGS_MAX, ARGS_MASK=ARGS_MASK,
               MAX_DEPTH=max_depth, RINGBUF_PAGES=ringbuf_bytes // page, INFLIGHT_MAX=inflight_max,
               IGNORE_WORDS=IGNORE_WORDS, WAKE_EVERY=wake_every,
               WAKE_QUIET_NS=int(WAKE_QUIET_S * 1e9), THREAD_SNAPS=thread_snaps)
    return out


def kernel_dev_to_st_dev(dev: int) -> int:
    """Kernel dev_t (MAJOR << 20 | MINOR) -> the st_dev userspace sees (new_encode_dev)."""
    major, minor = dev >> 20, dev & 0xFFFFF
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
