/* Process sensor: exec, fork, exit; what keeps the userspace process cache current.
 *
 * A successful exec is recorded at sched:sched_process_exec: it fires after the point of no return
 * with the new image in place (current->mm->exe_file = the true executable, mm->arg_start..arg_end =
 * the new argv, creds committed, comm set), and its `filename` is the kernel's own copy of the name
 * the caller passed (bprm->filename), so no user memory that a racing thread could change is read.
 * The credentials before it are the thread's snapshot (fimstream.h), which this sensor keeps: taken for
 * every new thread at fork and again at exec, dropped at exit. sys_exit_execve only reports failed execs
 * (the caller's string is still mapped then). No hook here is at sys_enter.
 */
#include "fimstream.h"

struct exec_body {        /* RK_EXEC; variable part: exe (file slot), filename, args */
    struct file_info exe;
    u16 filename_len;
    u16 args_len;         /* NUL-separated argv bytes */
    u16 args_flags;       /* 1 = truncated at ARGS_MAX */
    u16 pad;
    u32 sc;               /* SC_EXECVE / SC_EXECVEAT; 0 for an exec the kernel started */
    s32 dfd;
    u32 mnt_ns;           /* mount namespace inode: tells userspace whose root paths are relative to */
    u32 xflags;           /* EXF_* */
    u32 old_uid, old_euid, old_gid, old_egid;  /* credentials before the exec (EXF_OLD_CRED) */
    u64 old_caps;         /* effective capabilities before and after */
    u64 new_caps;
    s64 mtime_ns;         /* the executed file's inode times (wall clock) */
    s64 ctime_ns;
};

#define EXF_OLD_CRED 1    /* old_* are the thread's snapshot from before the exec */
#define EXF_OVERLAY 2     /* the file is on overlayfs */
#define EXF_UPPER 4       /* ... and has an upper-layer copy: written or changed after the layers were made */
#define OVERLAYFS_SUPER_MAGIC_ 0x794c7630
#define DEV_FD_PREFIX 0x2f64662f7665642fULL   /* "/dev/fd/" as a little-endian u64 */

struct fork_body {        /* RK_FORK: the header is the parent's */
    u32 child_pid;
    u32 pad;
    u64 child_start_time;
};

struct cgroup_body {      /* RK_CGROUP_ATTACH: the header is the mover's; variable part: the path */
    u32 pid;              /* the process (thread group leader) or thread moved */
    s32 hierarchy;        /* hierarchy id as /proc/PID/cgroup numbers it (0: the unified one) */
    u64 cgroup_id;        /* the destination's kernfs id (what bpf_get_current_cgroup_id returns, in v2) */
    u16 path_len;
    u16 pad;
    u32 pad2;
};

struct exit_body {        /* RK_EXIT */
    s32 exit_code;        /* wait status: code << 8 | signal */
    u32 pad;
};

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))
#define CTIME_NSEC_MASK 0x7fffffff  /* bit 31 of i_ctime_nsec: I_CTIME_QUERIED (multigrain timestamps) */

/* A file with no place in any directory tree (memfd_create, other pseudo files): its dentry is its own
 * parent, so a walk finds nothing above it. The name d_path shows is "/" + d_name ("/memfd:payload");
 * it is on no mount the process can reach, and with no link left it reads as deleted. Returns 1 when
 * `dentry` is such a file and the slot was filled. */
static __always_inline int slot_pseudo(struct scratch *s, struct file_info *fi, u64 file, u64 dentry, u64 inode)
{
    WIN_BUF(d, W_DENTRY);
    READ_WIN(d, W_DENTRY, dentry);
    if (WIN64(d, W_DENTRY, O_DENTRY_PARENT) != dentry)
        return 0;
    if (rd64(rd64(file + O_FILE_PATH_MNT) + O_VFSMOUNT_ROOT) == dentry)
        return 0;  /* the root of a mount (a detached one): the walk's business */
    fill_inode(fi, inode);
    u32 off = s->len;
    if (off > EV_VAR_MASK)
        return 0;
    s->ev[off & EV_VAR_MASK] = '/';
    s->len = off + 1;
    u32 n = append_str(s, WIN64(d, W_DENTRY, O_DENTRY_NAME_NAME), 0);
    fi->str_len = 0;
    fi->path_len = n + 1;
    fi->path_flags = PF_OUTSIDE_ROOT | (fi->nlink ? 0 : PF_DELETED);
    return 1;
}

TP(sched, sched_process_exec)
{
    u64 task = bpf_get_current_task();
    /* credentials before the exec, to see a set-user-ID/set-group-ID or file-capability change: the
     * snapshot of the thread that called exec (old_pid: a non-leader thread's exec takes the leader's pid),
     * then the snapshot taken again, whoever the caller (the pipeline's own pids included) */
    u32 old_tid = args->old_pid, tid = (u32)bpf_get_current_pid_tgid();
    struct cred_snap old = {};
    struct thread_snap *t = thread_snaps.lookup(&old_tid);
    int have_old = t != 0;
    if (t)
        __builtin_memcpy(&old, &t->cred, sizeof(old));
    if (old_tid != tid)
        thread_snaps.delete(&old_tid);
    snap_take(tid, task);
    if (drop_ignored(RK_EXEC))
        return 0;
    tally(RK_EXEC, C_SEEN);
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, task, RK_EXEC, sizeof(struct exec_body), 0);
    struct exec_body *b = BODY(exec_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    if (have_old) {
        b->xflags |= EXF_OLD_CRED;
        b->old_uid = old.uid;
        b->old_euid = old.euid;
        b->old_gid = old.gid;
        b->old_egid = old.egid;
        b->old_caps = old.cap_eff;
    }
    /* Which syscall. Not from the saved syscall number: the ELF loader sets it to __NR_execve on x86_64
     * ("pretend that this comes from a 64bit execve", set_personality_64bit), for an execveat too and for
     * an exec the kernel started. The kernel's copy of the name tells execveat relative to a dirfd (fexecve,
     * a memfd): "/dev/fd/N[/name]"; an execveat(AT_FDCWD, path) reads as the execve it is equivalent to.
     * An exec the kernel started (usermode helpers: modprobe, core dump pipes; init) runs in a task whose
     * parent is a kernel thread (kthreadd, the idle task). */
    if (!is_kthread(TASK64(s, O_TASK_REAL_PARENT))) {
        u64 head = 0;
        bpf_probe_read_kernel(&head, sizeof(head), (char *)args + (args->data_loc_filename & 0xFFFF));
        b->sc = head == DEV_FD_PREFIX ? SC_EXECVEAT : SC_EXECVE;
    }
    b->mnt_ns = rd32(rd64(TASK64(s, O_TASK_NSPROXY) + O_NSPROXY_MNT_NS) + O_MNT_NS_INUM);
    b->new_caps = rd64(TASK64(s, O_TASK_CRED) + O_CRED_CAP_EFFECTIVE);
    u64 mm = TASK64(s, O_TASK_MM);
    u64 exe_file = rd64(mm + O_MM_EXE_FILE);
    u64 exe_dentry = rd64(exe_file + O_FILE_PATH_DENTRY);
    u64 inode = rd64(exe_dentry + O_DENTRY_INODE);
    if (inode) {
#if O_INODE_MTIME_SEC >= 0
        b->mtime_ns = (s64)rd64(inode + O_INODE_MTIME_SEC) * 1000000000 + rd32(inode + O_INODE_MTIME_NSEC);
        b->ctime_ns = (s64)rd64(inode + O_INODE_CTIME_SEC) * 1000000000
                      + (rd32(inode + O_INODE_CTIME_NSEC) & CTIME_NSEC_MASK);
#endif
        /* overlayfs: the inode is the vfs_inode inside a struct ovl_inode, whose __upperdentry is set
         * once the file exists in the upper (container-writable) layer */
        if (rd64(rd64(inode + O_INODE_SB) + O_SB_MAGIC) == OVERLAYFS_SUPER_MAGIC_) {
            b->xflags |= EXF_OVERLAY;
            if (rd64(inode - O_OVL_INODE_VFS_INODE + O_OVL_INODE_UPPERDENTRY))
                b->xflags |= EXF_UPPER;
        }
    }
    if (!exe_dentry || !slot_pseudo(s, &b->exe, exe_file, exe_dentry, inode))
        slot_file(s, &b->exe, exe_file);
    u32 loc = args->data_loc_filename;
    b->filename_len = append_str(s, (u64)args + (loc & 0xFFFF), 0);

    u64 start = rd64(mm + O_MM_ARG_START);
    u64 end = rd64(mm + O_MM_ARG_END);
    u64 n = end > start ? end - start : 0;
    if (n > ARGS_MAX) {
        n = ARGS_MAX;
        b->args_flags = 1;
    }
    u32 off = s->len;
    opaque(n);
    if (off <= EV_VAR_MASK && n) {
        if (bpf_probe_read_user(&s->ev[off & EV_VAR_MASK], n & ARGS_MASK, (void *)start) == 0) {
            b->args_len = n & ARGS_MASK;
            s->len = off + (n & ARGS_MASK);
        }
    }
    emit(s, RK_EXEC);
    return 0;
}

/* A failed exec: the caller's arguments are still in its registers and memory. */
static __always_inline int exec_failed(struct inflight in, long ret)
{
    tally(RK_EXEC, C_SEEN);
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_EXEC, sizeof(struct exec_body), ret);
    struct exec_body *b = BODY(exec_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    slot_user_path(s, &b->exe, in.a[0], in.a[1]);
    emit(s, RK_EXEC);
    return 0;
}

TP(syscalls, sys_exit_execve)
{
    if (args->ret >= 0)
        return 0;                                     /* success was recorded at sched_process_exec */
    EXIT_ARGS(RK_EXEC, SC_EXECVE, AT_FDCWD_, REG(0), 0, 0, 0, 0);
    return exec_failed(in, args->ret);
}

TP(syscalls, sys_exit_execveat)
{
    if (args->ret >= 0)
        return 0;
    EXIT_ARGS(RK_EXEC, SC_EXECVEAT, REGI(0), REG(1), REGI(4), 0, 0, 0);
    return exec_failed(in, args->ret);
}

RAW_TP(sched_process_fork)
{
    /* args: (struct task_struct *parent, struct task_struct *child); threads are not processes */
    u64 child = ctx->args[1];
    u32 child_pid = rd32(child + O_TASK_PID);
    snap_take(child_pid, child);                      /* every thread's: what its first credential change is compared with */
    if (child_pid != rd32(child + O_TASK_TGID))
        return 0;
    tally(RK_FORK, C_SEEN);
    u64 task = bpf_get_current_task();
    if (is_kthread(child) || ignored(bpf_get_current_pid_tgid() >> 32)) {
        tally(RK_FORK, C_FILTERED);
        return 0;
    }
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, task, RK_FORK, sizeof(struct fork_body), child_pid);
    struct fork_body *b = BODY(fork_body, s);
    b->child_pid = child_pid;
    b->pad = 0;
    b->child_start_time = rd64(child + O_TASK_START_BOOTTIME);
    emit(s, RK_FORK);
    return 0;
}

TP(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    thread_snaps.delete(&tid);
    if (!args->group_dead)
        return 0;
    u64 task = bpf_get_current_task();
    tally(RK_EXIT, C_SEEN);
    if (ignored(id >> 32) || is_kthread(task)) {
        tally(RK_EXIT, C_FILTERED);
        return 0;
    }
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, task, RK_EXIT, sizeof(struct exit_body), 0);
    struct exit_body *b = BODY(exit_body, s);
    b->exit_code = (s32)TASK32(s, O_TASK_EXIT_CODE);
    b->pad = 0;
    emit(s, RK_EXIT);
    return 0;
}

/* A task moved to another cgroup (a runtime putting a process into its container's, systemd, a user
 * writing cgroup.procs), in any hierarchy: the process cache follows it here instead of reading
 * /proc/PID/cgroup at every exec. Forks inherit the parent's cgroups; clone3(CLONE_INTO_CGROUP) does
 * not (no attach either): userspace sees that one as a v2 cgroup id that differs at exec. */
TP(cgroup, cgroup_attach_task)
{
    tally(RK_CGROUP_ATTACH, C_SEEN);
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, bpf_get_current_task(), RK_CGROUP_ATTACH, sizeof(struct cgroup_body), 0);
    struct cgroup_body *b = BODY(cgroup_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->pid = (u32)args->pid;
    b->hierarchy = args->dst_root;
    b->cgroup_id = args->dst_id;
    u32 loc = args->data_loc_dst_path;
    b->path_len = append_str(s, (u64)args + (loc & 0xFFFF), 0);
    emit(s, RK_CGROUP_ATTACH);
    return 0;
}
