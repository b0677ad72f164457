/* Process sensor: exec, fork, exit; what keeps the userspace process cache current.
 *
 * A successful exec is recorded at sched:sched_process_exec: it fires after the point of no return
 * with the new image in place (current->mm->exe_file = the true executable, mm->arg_start..arg_end =
 * the new argv, creds committed, comm set), and its `filename` is the kernel's own copy of the name
 * the caller passed (bprm->filename), so no user memory that a racing thread could change is read.
 * sys_exit_execve only reports failed execs (the caller's string is still mapped then).
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
    u32 pad2;
};

struct fork_body {        /* RK_FORK: the header is the parent's */
    u32 child_pid;
    u32 pad;
    u64 child_start_time;
};

struct exit_body {        /* RK_EXIT */
    s32 exit_code;        /* wait status: code << 8 | signal */
    u32 pad;
};

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

TP(sched, sched_process_exec)
{
    u64 task = bpf_get_current_task();
    tally(RK_EXEC, C_SEEN);
    if (ignored(bpf_get_current_pid_tgid() >> 32)) {
        tally(RK_EXEC, C_FILTERED);
        return 0;
    }
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, task, RK_EXEC, sizeof(struct exec_body), 0);
    struct exec_body *b = BODY(exec_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 old_tid = args->old_pid;                      /* differs when a non-leader thread exec'd */
    struct inflight *in = inflight.lookup(&old_tid);  /* which syscall (none: an exec started by the kernel) */
    if (in) {
        b->sc = in->sc;
        if (old_tid != tid)
            inflight.delete(&old_tid);                /* its sys_exit runs under the new tid */
    }
    b->mnt_ns = rd32(rd64(TASK64(s, O_TASK_NSPROXY) + O_NSPROXY_MNT_NS) + O_MNT_NS_INUM);
    u64 mm = TASK64(s, O_TASK_MM);
    slot_file(s, &b->exe, rd64(mm + O_MM_EXE_FILE));
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

/* Exec arguments are saved for the failure report only; kind 0 keeps these entries out of the exec
 * counters, which count sched_process_exec hits and failed execs once each. */
TP(syscalls, sys_enter_execve)
{
    return stash(0, SC_EXECVE, AT_FDCWD_, (u64)args->filename, 0, 0, 0, 0);
}

TP(syscalls, sys_enter_execveat)
{
    return stash(0, SC_EXECVEAT, args->fd, (u64)args->filename, args->flags, 0, 0, 0);
}

static __always_inline int exec_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in) || ret >= 0)
        return 0;                                     /* success was recorded at sched_process_exec */
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

TP(syscalls, sys_exit_execve) { return exec_exit(args->ret); }
TP(syscalls, sys_exit_execveat) { return exec_exit(args->ret); }

RAW_TP(sched_process_fork)
{
    /* args: (struct task_struct *parent, struct task_struct *child); threads are not processes */
    u64 child = ctx->args[1];
    u32 child_pid = rd32(child + O_TASK_PID);
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
    inflight.delete(&tid);                            /* a thread that died inside a syscall */
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
