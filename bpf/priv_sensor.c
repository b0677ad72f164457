/* Privilege sensor: set*uid/set*gid/setfs*id, setgroups, capset, unshare, setns, chroot.
 *
 * Every hook snapshots the caller's credentials at sys_enter (and, where the call changes them, its
 * namespaces or its root) and reads them again at sys_exit, so a record says what the call really
 * changed, not what it asked for: the kernel's own view before and after, whatever the arguments meant
 * (-1 = unchanged, saved ids, a pidfd passed to setns, a user namespace entered by unshare). The
 * arguments are recorded too, so a refused attempt (setuid(0) -> EPERM) is visible as such.
 *
 * The exec of a set-user-ID/set-group-ID or file-capability binary is the process sensor's business
 * (a credential change across exec, compared at sched_process_exec).
 */
#include "fimstream.h"

/* types bcc copies from the capset tracepoint's format into its `args` struct (no kernel headers here) */
typedef void *cap_user_header_t;
typedef void *cap_user_data_t;

struct cred_snap {        /* 56 bytes */
    u32 uid, euid, suid, fsuid;
    u32 gid, egid, sgid, fsgid;
    u64 cap_inh, cap_perm, cap_eff;
};

#define PRIV_NS 8         /* mnt uts ipc pid_for_children net time_for_children cgroup user */
#define PRIV_GROUPS 32

struct priv_in {          /* sys_enter -> sys_exit */
    u32 sc;
    u32 kind;
    u64 a[3];
    struct cred_snap old;
    u32 ns[PRIV_NS];
    u64 root_mnt, root_dentry;    /* chroot: the root the new one is walked up to */
};

struct priv_body {        /* RK_SETUID .. RK_CHROOT; variable part: the chroot slot's bytes */
    u32 sc;
    u32 ngroups;          /* setgroups: supplementary groups after the call (the first PRIV_GROUPS below) */
    u64 a[3];             /* the syscall's arguments */
    struct cred_snap old;
    struct cred_snap new;
    u32 ns_old[PRIV_NS];  /* namespace inode numbers (unshare, setns) */
    u32 ns_new[PRIV_NS];
    u32 groups[PRIV_GROUPS];
    struct file_info root;  /* chroot: the new root, walked up to the old one */
};

/* A thread killed between sys_enter and sys_exit leaves its entry behind: LRU keeps that bounded. */
BPF_TABLE("lru_hash", u32, struct priv_in, priv_inflight, 1024);

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

static __always_inline void cred_read(struct cred_snap *c, u64 cred)
{
    c->uid = rd32(cred + O_CRED_UID);
    c->euid = rd32(cred + O_CRED_EUID);
    c->suid = rd32(cred + O_CRED_SUID);
    c->fsuid = rd32(cred + O_CRED_FSUID);
    c->gid = rd32(cred + O_CRED_GID);
    c->egid = rd32(cred + O_CRED_EGID);
    c->sgid = rd32(cred + O_CRED_SGID);
    c->fsgid = rd32(cred + O_CRED_FSGID);
    c->cap_inh = rd64(cred + O_CRED_CAP_INHERITABLE);
    c->cap_perm = rd64(cred + O_CRED_CAP_PERMITTED);
    c->cap_eff = rd64(cred + O_CRED_CAP_EFFECTIVE);
}

static __always_inline u32 ns_inum(u64 nsproxy, u32 member, u32 inum)
{
    u64 ns = rd64(nsproxy + member);
    return ns ? rd32(ns + inum) : 0;
}

static __always_inline void ns_read(u32 *ns, u64 task)
{
    u64 nsp = rd64(task + O_TASK_NSPROXY);
    if (nsp) {
        ns[0] = ns_inum(nsp, O_NSPROXY_MNT_NS, O_MNT_NS_INUM);
        ns[1] = ns_inum(nsp, O_NSPROXY_UTS_NS, O_UTS_NS_INUM);
        ns[2] = ns_inum(nsp, O_NSPROXY_IPC_NS, O_IPC_NS_INUM);
        ns[3] = ns_inum(nsp, O_NSPROXY_PID_NS_FOR_CHILDREN, O_PID_NS_INUM);
        ns[4] = ns_inum(nsp, O_NSPROXY_NET_NS, O_NET_NS_INUM);
#if O_NSPROXY_TIME_NS_FOR_CHILDREN >= 0
        ns[5] = ns_inum(nsp, O_NSPROXY_TIME_NS_FOR_CHILDREN, O_TIME_NS_INUM);
#endif
        ns[6] = ns_inum(nsp, O_NSPROXY_CGROUP_NS, O_CGROUP_NS_INUM);
    }
    ns[7] = ns_inum(rd64(task + O_TASK_CRED), O_CRED_USER_NS, O_USER_NS_INUM);
}

static __always_inline int priv_enter(u32 kind, u32 sc, u64 a0, u64 a1, u64 a2)
{
    u64 id = bpf_get_current_pid_tgid();
    if (drop_ignored(kind))
        return 0;
    tally(kind, C_SEEN);
    u64 task = bpf_get_current_task();
    struct priv_in in = {};
    in.sc = sc;
    in.kind = kind;
    in.a[0] = a0;
    in.a[1] = a1;
    in.a[2] = a2;
    cred_read(&in.old, rd64(task + O_TASK_CRED));
    if (kind == RK_UNSHARE || kind == RK_SETNS)
        ns_read(in.ns, task);
    if (kind == RK_CHROOT) {
        u64 fs = rd64(task + O_TASK_FS);
        in.root_mnt = rd64(fs + O_FS_ROOT + O_PATH_MNT);
        in.root_dentry = rd64(fs + O_FS_ROOT + O_PATH_DENTRY);
    }
    u32 tid = (u32)id;
    priv_inflight.update(&tid, &in);
    return 0;
}

static __always_inline int priv_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct priv_in *in = priv_inflight.lookup(&tid);
    if (!in)
        return 0;
    struct scratch *s = scratch_get();
    if (!s) {
        priv_inflight.delete(&tid);
        return 0;
    }
    u64 task = bpf_get_current_task();
    u32 kind = in->kind;
    begin(s, task, kind, sizeof(struct priv_body), ret);
    struct priv_body *b = BODY(priv_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = in->sc;
    b->a[0] = in->a[0];
    b->a[1] = in->a[1];
    b->a[2] = in->a[2];
    __builtin_memcpy(&b->old, &in->old, sizeof(b->old));
    u64 cred = TASK64(s, O_TASK_CRED);
    cred_read(&b->new, cred);
    if (kind == RK_UNSHARE || kind == RK_SETNS) {
        __builtin_memcpy(b->ns_old, in->ns, sizeof(b->ns_old));
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
            WIN_BUF(fs, W_FS);
            READ_WIN(fs, W_FS, TASK64(s, O_TASK_FS));
            u64 dentry = WIN64(fs, W_FS, O_FS_ROOT + O_PATH_DENTRY);
            fill_inode(&b->root, rd64(dentry + O_DENTRY_INODE));
            b->root.path_flags = walk_to(s, dentry, WIN64(fs, W_FS, O_FS_ROOT + O_PATH_MNT), in->root_mnt, in->root_dentry);
            b->root.path_len = append_walk(s);
        } else {
            slot_user_path(s, &b->root, AT_FDCWD_, in->a[0]);
        }
    }
    priv_inflight.delete(&tid);
    emit(s, kind);
    return 0;
}

/* ------------------------------------------------------------------------------------------ ids */
TP(syscalls, sys_enter_setuid) { return priv_enter(RK_SETUID, SC_SETUID, args->uid, 0, 0); }
TP(syscalls, sys_enter_setreuid) { return priv_enter(RK_SETUID, SC_SETREUID, args->ruid, args->euid, 0); }
TP(syscalls, sys_enter_setresuid) { return priv_enter(RK_SETUID, SC_SETRESUID, args->ruid, args->euid, args->suid); }
TP(syscalls, sys_enter_setfsuid) { return priv_enter(RK_SETUID, SC_SETFSUID, args->uid, 0, 0); }
TP(syscalls, sys_enter_setgid) { return priv_enter(RK_SETGID, SC_SETGID, args->gid, 0, 0); }
TP(syscalls, sys_enter_setregid) { return priv_enter(RK_SETGID, SC_SETREGID, args->rgid, args->egid, 0); }
TP(syscalls, sys_enter_setresgid) { return priv_enter(RK_SETGID, SC_SETRESGID, args->rgid, args->egid, args->sgid); }
TP(syscalls, sys_enter_setfsgid) { return priv_enter(RK_SETGID, SC_SETFSGID, args->gid, 0, 0); }
TP(syscalls, sys_enter_setgroups) { return priv_enter(RK_SETGROUPS, SC_SETGROUPS, args->gidsetsize, 0, 0); }
TP(syscalls, sys_enter_capset) { return priv_enter(RK_CAPSET, SC_CAPSET, 0, 0, 0); }

TP(syscalls, sys_exit_setuid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setreuid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setresuid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setfsuid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setgid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setregid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setresgid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setfsgid) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setgroups) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_capset) { return priv_exit(args->ret); }

/* ----------------------------------------------------------------------------- namespaces, root */
TP(syscalls, sys_enter_unshare) { return priv_enter(RK_UNSHARE, SC_UNSHARE, args->unshare_flags, 0, 0); }
TP(syscalls, sys_enter_setns) { return priv_enter(RK_SETNS, SC_SETNS, args->fd, args->flags, 0); }
TP(syscalls, sys_enter_chroot) { return priv_enter(RK_CHROOT, SC_CHROOT, (u64)args->filename, 0, 0); }

TP(syscalls, sys_exit_unshare) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_setns) { return priv_exit(args->ret); }
TP(syscalls, sys_exit_chroot) { return priv_exit(args->ret); }
