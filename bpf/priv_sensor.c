/* Privilege sensor: set*uid/set*gid/setfs*id, setgroups, capset, unshare, setns, chroot.
 *
 * Every hook runs at sys_exit alone and compares the caller's credentials (and, where the call changes
 * them, its namespaces or its root) with the thread's snapshot from before the call (fimstream.h: taken at
 * fork and exec by the process sensor, and again here after each call), so a record says what the call
 * really changed, not what it asked for: the kernel's own view before and after, whatever the arguments
 * meant (-1 = unchanged, saved ids, a pidfd passed to setns, a user namespace entered by unshare). The
 * arguments are recorded too (from the saved registers), so a refused attempt (setuid(0) -> EPERM) is
 * visible as such. A thread with no snapshot (the map full, or a thread that began between the collector's
 * start and its /proc scan) is reported with PRIV_OLD_UNKNOWN.
 *
 * The exec of a set-user-ID/set-group-ID or file-capability binary is the process sensor's business
 * (a credential change across exec, compared at sched_process_exec).
 */
#include "fimstream.h"

#define PRIV_GROUPS 32
#define PRIV_OLD_UNKNOWN 1    /* no snapshot: old and ns_old are zero */
#define PRIV_ROOT_UNKNOWN 2   /* chroot: the old root is not known (a thread seeded from /proc): the new
                               * root is walked up to its mount namespace's root (PF_OUTSIDE_ROOT) */

struct priv_body {        /* RK_SETUID .. RK_CHROOT; variable part: the chroot slot's bytes */
    u32 sc;
    u32 ngroups;          /* setgroups: supplementary groups after the call (the first PRIV_GROUPS below) */
    u32 pflags;           /* PRIV_* */
    u32 pad;
    u64 a[3];             /* the syscall's arguments */
    struct cred_snap old;
    struct cred_snap new;
    u32 ns_old[SNAP_NS];  /* namespace inode numbers (unshare, setns) */
    u32 ns_new[SNAP_NS];
    u32 groups[PRIV_GROUPS];
    struct file_info root;  /* chroot: the new root, walked up to the old one */
};

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

static __always_inline void priv_record(struct scratch *s, struct inflight *in, long ret, u64 task,
                                        struct thread_snap *t)
{
    u32 kind = in->pad;
    begin(s, task, kind, sizeof(struct priv_body), ret);
    struct priv_body *b = BODY(priv_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = in->sc;
    b->a[0] = in->a[0];
    b->a[1] = in->a[1];
    b->a[2] = in->a[2];
    u64 root_mnt = 0, root_dentry = 0;
    if (t) {
        __builtin_memcpy(&b->old, &t->cred, sizeof(b->old));
        __builtin_memcpy(b->ns_old, t->ns, sizeof(b->ns_old));
        root_mnt = t->root_mnt;
        root_dentry = t->root_dentry;
    } else {
        b->pflags |= PRIV_OLD_UNKNOWN;
    }
    u64 cred = TASK64(s, O_TASK_CRED);
    cred_read(&b->new, cred);
    if (kind == RK_UNSHARE || kind == RK_SETNS) {
        ns_read(b->ns_new, task);
    } else if (kind == RK_SETGROUPS) {
        u64 gi = rd64(cred + O_CRED_GROUP_INFO);
        if (gi) {
            b->ngroups = rd32(gi + O_GROUP_INFO_NGROUPS);
            bpf_probe_read_kernel(b->groups, sizeof(b->groups), (void *)(gi + O_GROUP_INFO_GID));
        }
    } else if (kind == RK_CHROOT) {
        if (ret == 0) {
            /* the new root as the old root saw it (PF_OUTSIDE_ROOT: it is not under the old root) */
            if (!root_mnt)
                b->pflags |= PRIV_ROOT_UNKNOWN;
            WIN_BUF(fs, W_FS);
            READ_WIN(fs, W_FS, TASK64(s, O_TASK_FS));
            u64 dentry = WIN64(fs, W_FS, O_FS_ROOT + O_PATH_DENTRY);
            fill_inode(&b->root, rd64(dentry + O_DENTRY_INODE));
            b->root.path_flags = walk_to(s, dentry, WIN64(fs, W_FS, O_FS_ROOT + O_PATH_MNT), root_mnt, root_dentry);
            b->root.path_len = append_walk(s);
        } else {
            slot_user_path(s, &b->root, AT_FDCWD_, in->a[0]);
        }
    }
    emit(s, kind);
}

/* The thread's snapshot after the call: what the next call is compared with. */
static __always_inline void priv_snap(struct thread_snap *t, u32 tid, u64 task, u32 kind, long ret)
{
    if (!t) {
        snap_take(tid, task);
        return;
    }
    cred_read(&t->cred, rd64(task + O_TASK_CRED));
    if (kind == RK_UNSHARE || kind == RK_SETNS)
        ns_read(t->ns, task);
    else if (kind == RK_CHROOT && ret == 0)
        root_read(t, task);
}

static __always_inline int priv_exit(struct inflight in, long ret)
{
    u32 kind = in.pad;
    tally(kind, C_SEEN);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 task = bpf_get_current_task();
    struct thread_snap *t = thread_snaps.lookup(&tid);
    struct scratch *s = scratch_get();
    if (s)
        priv_record(s, &in, ret, task, t);
    priv_snap(t, tid, task, kind, ret);
    return 0;
}

/* ------------------------------------------------------------------------------------------ ids */
/* the arguments as the kernel's parameters take them: uid_t/gid_t unsigned, setgroups' size and setns's
 * fd and nstype int */
TP(syscalls, sys_exit_setuid) { EXIT_ARGS(RK_SETUID, SC_SETUID, REGU(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setreuid) { EXIT_ARGS(RK_SETUID, SC_SETREUID, REGU(0), REGU(1), 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setresuid) { EXIT_ARGS(RK_SETUID, SC_SETRESUID, REGU(0), REGU(1), REGU(2), 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setfsuid) { EXIT_ARGS(RK_SETUID, SC_SETFSUID, REGU(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setgid) { EXIT_ARGS(RK_SETGID, SC_SETGID, REGU(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setregid) { EXIT_ARGS(RK_SETGID, SC_SETREGID, REGU(0), REGU(1), 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setresgid) { EXIT_ARGS(RK_SETGID, SC_SETRESGID, REGU(0), REGU(1), REGU(2), 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setfsgid) { EXIT_ARGS(RK_SETGID, SC_SETFSGID, REGU(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setgroups) { EXIT_ARGS(RK_SETGROUPS, SC_SETGROUPS, REGI(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_capset) { EXIT_ARGS(RK_CAPSET, SC_CAPSET, 0, 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }

/* ----------------------------------------------------------------------------- namespaces, root */
TP(syscalls, sys_exit_unshare) { EXIT_ARGS(RK_UNSHARE, SC_UNSHARE, REG(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_setns) { EXIT_ARGS(RK_SETNS, SC_SETNS, REGI(0), REGI(1), 0, 0, 0, 0); return priv_exit(in, args->ret); }
TP(syscalls, sys_exit_chroot) { EXIT_ARGS(RK_CHROOT, SC_CHROOT, REG(0), 0, 0, 0, 0, 0); return priv_exit(in, args->ret); }
