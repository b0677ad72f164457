/* Shared by every fimstream sensor (bcc C): the ring-buffer record header, the maps every sensor uses,
 * task context, true-path walks and output with loss counting.
 *
 * No kernel struct is read through the installed headers (their layouts are wrong for the running
 * kernel): every offset is an O_* macro computed from /sys/kernel/btf/vmlinux by offsets.py, and kernel
 * pointers are plain u64 read with bpf_probe_read_kernel. Record kinds (RK_*), syscall codes (SC_*),
 * path flags (PF_*) and sizes come from the same Python module, so both sides share one definition.
 */
#ifndef FIMSTREAM_H
#define FIMSTREAM_H

#define AT_FDCWD_ (-100)
#define PF_KTHREAD_ 0x00200000

/* Program declarations. bcc auto-attaches functions named tracepoint__* at load; these names keep
 * attaching under each sensor's control (sensor.py). bcc derives `args` from the struct name. */
#define TP(category, event) \
    int tp__##category##__##event(struct tracepoint__##category##__##event *args)
#define RAW_TP(event) int rawtp__##event(struct bpf_raw_tracepoint_args *ctx)

/* Keep a value opaque to clang so a mask or bound check the verifier needs is not optimised away. */
#define opaque(v) asm volatile("" : "+r"(v))

/* ----------------------------------------------------------------------------------- record layout */
struct rec_hdr {          /* 96 bytes, first in every record; parsed by records.HEADER */
    u16 kind;             /* RK_* */
    u16 hflags;
    u32 reserved;
    u64 ktime;            /* bpf_ktime_get_boot_ns() */
    s64 retval;
    /* bytes 24..92 identify a thread's process context: userspace caches encodings by them */
    u64 start_time;       /* group_leader->start_boottime (ns since boot) */
    u64 cgroup_id;        /* cgroup v2 id (bpf_get_current_cgroup_id) */
    u32 pid;              /* tgid */
    u32 tid;
    u32 ppid;             /* real_parent->tgid */
    u32 uid, gid, euid, egid;
    u32 auid, sessionid;
    char comm[16];
    u32 pad;
};

struct file_info {        /* 32 bytes; its path bytes follow in the record's variable part */
    u64 ino;
    u32 dev;              /* kernel dev_t (MAJOR << 20 | MINOR); userspace converts to st_dev */
    u32 nlink;
    u32 uid;
    u32 gid;
    u16 mode;
    u16 path_flags;       /* PF_* */
    u16 str_len;          /* bytes of the caller's string (first in the variable part); 0 = none */
    u16 path_len;         /* bytes of the kernel-walked path (after the string) */
};

/* Per-CPU assembly area: a record is built here and copied into the ring buffer with its exact size
 * (bpf_ringbuf_reserve needs a constant size; bpf_ringbuf_output takes a bounded variable one). The
 * write positions live in map memory: kept in registers, their exact value in every branch stops the
 * verifier from pruning states and a 32-level walk becomes "program too large". */
struct scratch {
    char ev[EV_SZ];
    char path[PATH_SZ];
    u64 task[W_TASK_LEN / 8];  /* one read of the current task's members (offsets.WINDOWS) */
    u32 len;              /* bytes of ev in use */
    u32 pos;              /* walk write position in path[] (the path is built backwards) */
    u32 unannounced;      /* records output on this CPU since the last reader wake-up */
    u32 pad;
};

struct inflight {         /* a syscall's arguments, read at its sys_exit (EXIT_ARGS) */
    u64 a[6];
    u32 sc;
    u32 pad;              /* the record kind */
};

/* ------------------------------------------------------------------------------------- shared maps */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(scratch_map, struct scratch, 1);
BPF_ARRAY(ring_wake, u64, 1);  /* ktime of the last quiet-spell wake-up (emit), shared by all CPUs */
/* The tgids the pipeline itself runs as, one bit per pid (pid_max is at most 2^22): an array lookup is
 * inlined by the verifier, a hash lookup costs ~40 ns here, on every hooked syscall. */
BPF_ARRAY(ignore_bits, u64, IGNORE_WORDS);
BPF_PERCPU_ARRAY(counters, u64, NKINDS * NCOUNTERS);   /* [kind][C_*], summed by userspace */

static __always_inline void tally(u32 kind, u32 what)
{
    u32 idx = kind * NCOUNTERS + what;
    u64 *c = counters.lookup(&idx);
    if (c)
        (*c)++;
}

/* ------------------------------------------------------------------------------------ kernel reads */
static __always_inline u64 rd64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u32 rd32(u64 addr)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

/* Windows: READ_WIN(buf, W, addr) copies an object's W window (W_TASK, W_FILE, ...) with one
 * bpf_probe_read_kernel; WIN*(buf, W, offset) picks a member out of the copy. Buffers are u64 arrays:
 * stack accesses must be aligned. */
#define WIN_BUF(name, W) u64 name[W##_LEN / 8]
#define READ_WIN(buf, W, addr) bpf_probe_read_kernel((buf), W##_LEN, (void *)((addr) + W##_START))
#define WIN64(buf, W, off) (*(u64 *)((char *)(buf) + (off) - W##_START))
#define WIN32(buf, W, off) (*(u32 *)((char *)(buf) + (off) - W##_START))
#define WIN16(buf, W, off) (*(u16 *)((char *)(buf) + (off) - W##_START))
#define TASK64(s, off) WIN64((s)->task, W_TASK, off)
#define TASK32(s, off) WIN32((s)->task, W_TASK, off)

/* Direct reads, for the hooks every file syscall runs (kdirect.py): bpf_rdonly_cast(addr, btf_id) turns
 * an address into a read-only typed pointer (a no-op at run time) and members become plain loads,
 * fault-safe and checked by the verifier against the running kernel's BTF: ~1 ns each, where a
 * bpf_probe_read_kernel costs ~30 ns here and the filter made a dozen per syscall. bcc 0.26 cannot emit
 * a kfunc call, so kcast_ calls a marker helper number that the loader rewrites into the kfunc call.
 * DWIN_BUF/DREAD_WIN/DWIN*(buf, W, off) and KRD64/KRD32(W, addr, off) (W also W_FILES, W_SB, ...: types
 * without a window) are direct with KDIRECT=1 and windows / probe reads without it.
 * Only where the values go to map memory or the record at once: a loaded pointer keeps its BTF type in
 * the verifier, and a variable that is a pointer on one path and a scalar on another (a walk's loop
 * variables) stops state pruning: the walks stay on windows.
 * KLOAD: a direct load, pinned to its block by opaque(): otherwise clang may sink a direct load and a
 * map-value load of two branches into one instruction, which the verifier refuses ("same insn cannot be
 * used with different pointers"). */
#define KLOAD(T, p) ({ T v_ = *(T *)(p); opaque(v_); v_; })
#if KDIRECT
static void *(*kcast_)(u64 obj, u32 btf_id) = (void *)KCAST_MARKER;
#define KOBJ(W, addr) ((char *)kcast_((u64)(addr), BTF_##W))
#define DWIN_BUF(name, W) char *name
#define DREAD_WIN(buf, W, addr) ((buf) = KOBJ(W, addr))
#define DWIN64(buf, W, off) KLOAD(u64, (buf) + (off))
#define DWIN32(buf, W, off) KLOAD(u32, (buf) + (off))
#define DWIN16(buf, W, off) KLOAD(u16, (buf) + (off))
#define KRD64(W, addr, off) KLOAD(u64, KOBJ(W, addr) + (off))
#define KRD32(W, addr, off) KLOAD(u32, KOBJ(W, addr) + (off))
#else
#define DWIN_BUF WIN_BUF
#define DREAD_WIN READ_WIN
#define DWIN64 WIN64
#define DWIN32 WIN32
#define DWIN16 WIN16
#define KRD64(W, addr, off) rd64((u64)(addr) + (off))
#define KRD32(W, addr, off) rd32((u64)(addr) + (off))
#endif
/* KRDV64(addr): a u64 at an address with no struct to name (an fd table slot): direct through an untyped
 * cast where the kernel takes bpf_rdonly_cast(addr, 0) (KVOID), else a probe read. */
#if KDIRECT && KVOID
#define KRDV64(addr) KLOAD(u64, (char *)kcast_((u64)(addr), 0))
#else
#define KRDV64(addr) rd64((u64)(addr))
#endif

/* The collector's own process and the other pipeline stages (ignore.pids). */
static __always_inline int ignored(u32 tgid)
{
    u32 word = tgid >> 6;
    u64 *bits = ignore_bits.lookup(&word);
    return bits && ((*bits >> (tgid & 63)) & 1);
}

/* A hooked syscall of an ignored caller: counted seen + filtered, nothing else is done. */
static __always_inline int drop_ignored(u32 kind)
{
    if (!ignored(bpf_get_current_pid_tgid() >> 32))
        return 0;
    tally(kind, C_SEEN);
    tally(kind, C_FILTERED);
    return 1;
}

static __always_inline int is_kthread(u64 task)
{
    return (rd32(task + O_TASK_FLAGS) & PF_KTHREAD_) != 0;
}

static __always_inline struct scratch *scratch_get(void)
{
    u32 zero = 0;
    return scratch_map.lookup(&zero);
}

/* Fill the record header from the current task (and keep its window in s->task for the sensor);
 * the body starts at sizeof(rec_hdr) + body_size. */
static __always_inline struct rec_hdr *begin(struct scratch *s, u64 task, u32 kind, u32 body_size, s64 retval)
{
    struct rec_hdr *h = (struct rec_hdr *)s->ev;
    u64 id = bpf_get_current_pid_tgid();
    READ_WIN(s->task, W_TASK, task);
    h->kind = kind;
    h->hflags = 0;
    h->reserved = 0;
    h->pad = 0;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->ktime = bpf_ktime_get_boot_ns();
    h->ppid = KRD32(W_TASK, TASK64(s, O_TASK_REAL_PARENT), O_TASK_TGID);
    WIN_BUF(cred, W_CRED);
    READ_WIN(cred, W_CRED, TASK64(s, O_TASK_CRED));
    h->uid = WIN32(cred, W_CRED, O_CRED_UID);
    h->gid = WIN32(cred, W_CRED, O_CRED_GID);
    h->euid = WIN32(cred, W_CRED, O_CRED_EUID);
    h->egid = WIN32(cred, W_CRED, O_CRED_EGID);
#if O_TASK_LOGINUID >= 0
    h->auid = TASK32(s, O_TASK_LOGINUID);
    h->sessionid = TASK32(s, O_TASK_SESSIONID);
#else
    h->auid = (u32)-1;
    h->sessionid = (u32)-1;
#endif
    u64 leader = TASK64(s, O_TASK_GROUP_LEADER);
    h->start_time = leader == task ? TASK64(s, O_TASK_START_BOOTTIME) : KRD64(W_TASK, leader, O_TASK_START_BOOTTIME);
    h->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
    h->retval = retval;
    s->len = sizeof(struct rec_hdr) + body_size;
    return h;
}

/* How the reader learns about a record. Waking it for every record costs the traced syscall more than
 * the record itself, and a timer in the reader costs an idle host wake-ups for nothing. So the first
 * record after a quiet spell of WAKE_QUIET_NS (on any CPU) wakes the reader at once, and so does every
 * WAKE_EVERY-th record per CPU under load; the records in between wake nobody: the reader drains once
 * more WAKE_QUIET_NS after each wake-up (Collector.poll), which covers every one of them. */
static __always_inline u64 wake_flags(struct scratch *s)
{
    if (++s->unannounced >= WAKE_EVERY) {
        s->unannounced = 0;
        return 2;                                     /* BPF_RB_FORCE_WAKEUP */
    }
    u32 zero = 0;
    u64 *last = ring_wake.lookup(&zero);
    if (!last)
        return 2;
    u64 now = bpf_ktime_get_ns();
    if (now - *last < WAKE_QUIET_NS)
        return 1;                                     /* BPF_RB_NO_WAKEUP: the reader's follow-up drain */
    *last = now;                                      /* racy across CPUs: at worst one more wake-up */
    return 2;
}

/* Copy the finished record into the ring buffer; a full ring buffer is counted, never silent. */
static __always_inline void emit(struct scratch *s, u32 kind)
{
    u64 flags = wake_flags(s);
    u64 len = s->len;
    if (len < sizeof(struct rec_hdr))
        return;
    opaque(len);                                      /* keep clang from folding the two checks */
    if (len > EV_SZ)
        len = EV_SZ;
    void *rec = s;                                    /* ev is first: (an array argument trips bcc's rewriter) */
    if (events.ringbuf_output(rec, len, flags) == 0)
        tally(kind, C_EMITTED);
    else
        tally(kind, C_LOST);
}

/* ---------------------------------------------------------------------------------------- files */
/* current->files->fdt->fd[fd] (needs begin() first: the task window) */
static __always_inline u64 fd_file(struct scratch *s, s64 fd)
{
    if (fd < 0)
        return 0;
    WIN_BUF(fdt, W_FDT);
    READ_WIN(fdt, W_FDT, rd64(TASK64(s, O_TASK_FILES) + O_FILES_FDT));
    if ((u64)fd >= WIN32(fdt, W_FDT, O_FDT_MAX_FDS))
        return 0;
    return rd64(WIN64(fdt, W_FDT, O_FDT_FD) + (u64)fd * 8);
}

static __always_inline void fill_inode(struct file_info *fi, u64 inode)
{
    if (!inode)
        return;
    DWIN_BUF(w, W_INODE);
    DREAD_WIN(w, W_INODE, inode);
    fi->ino = DWIN64(w, W_INODE, O_INODE_INO);
    fi->mode = DWIN16(w, W_INODE, O_INODE_MODE);
    fi->nlink = DWIN32(w, W_INODE, O_INODE_NLINK);
    fi->uid = DWIN32(w, W_INODE, O_INODE_UID);
    fi->gid = DWIN32(w, W_INODE, O_INODE_GID);
    fi->dev = KRD32(W_SB, DWIN64(w, W_INODE, O_INODE_SB), O_SB_DEV);
}

/* Walk dentry -> d_parent up to the root (root_mnt, root_dentry), crossing mounts through
 * mnt_parent/mnt_mountpoint (what d_path does), writing "/name" components backwards into s->path
 * ending at PATH_END. Returns PF_* flags; the path is s->path[s->pos .. PATH_END). One window read per
 * component (parent, name, length) plus the name itself, one per mount crossed. */
static __always_inline u32 walk_to(struct scratch *s, u64 dentry, u64 vfsmnt, u64 root_mnt, u64 root_dentry)
{
    u64 mnt = vfsmnt - O_MOUNT_MNT;
    WIN_BUF(m, W_MOUNT);
    READ_WIN(m, W_MOUNT, mnt);
    WIN_BUF(d, W_DENTRY);
    u32 flags = 0;
    u32 done = 0;
    s->pos = PATH_END;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_DEPTH; i++) {
        if (dentry == root_dentry && mnt + O_MOUNT_MNT == root_mnt) {
            done = 1;
            break;
        }
        if (dentry == WIN64(m, W_MOUNT, O_MOUNT_MNT + O_VFSMOUNT_ROOT)) {
            u64 parent_mnt = WIN64(m, W_MOUNT, O_MOUNT_PARENT);
            if (parent_mnt == mnt || !parent_mnt) {   /* a namespace root or a detached mount */
                flags |= PF_OUTSIDE_ROOT;
                done = 1;
                break;
            }
            dentry = WIN64(m, W_MOUNT, O_MOUNT_MOUNTPOINT);
            mnt = parent_mnt;
            READ_WIN(m, W_MOUNT, mnt);
            continue;
        }
        READ_WIN(d, W_DENTRY, dentry);
        u64 parent = WIN64(d, W_DENTRY, O_DENTRY_PARENT);
        if (parent == dentry || !parent) {            /* disconnected dentry (pseudo fs, NFS export) */
            flags |= PF_OUTSIDE_ROOT;
            done = 1;
            break;
        }
        u32 len = WIN32(d, W_DENTRY, O_DENTRY_NAME_LEN);
        u32 pos = s->pos;
        if (len > NAME_MAX_ || len + 1 > pos) {
            flags |= PF_TRUNCATED;
            done = 1;
            break;
        }
        pos -= len;
        opaque(pos);
        bpf_probe_read_kernel(&s->path[pos & PATH_MASK], len & NAME_MAX_, (void *)WIN64(d, W_DENTRY, O_DENTRY_NAME_NAME));
        pos -= 1;
        opaque(pos);
        s->path[pos & PATH_MASK] = '/';
        s->pos = pos;
        dentry = parent;
    }
    if (!done && !(dentry == root_dentry && mnt + O_MOUNT_MNT == root_mnt))
        flags |= PF_DEPTH;
    if (s->pos == PATH_END) {                         /* the root itself */
        s->pos = PATH_END - 1;
        s->path[PATH_END - 1] = '/';
    }
    return flags;
}

/* The walk up to the task's root: the path as the process sees it. */
static __always_inline u32 walk(struct scratch *s, u64 dentry, u64 vfsmnt)
{
    WIN_BUF(fs, W_FS);
    READ_WIN(fs, W_FS, TASK64(s, O_TASK_FS));
    return walk_to(s, dentry, vfsmnt, WIN64(fs, W_FS, O_FS_ROOT + O_PATH_MNT), WIN64(fs, W_FS, O_FS_ROOT + O_PATH_DENTRY));
}

/* Append the walked path to the record; returns its length. */
static __always_inline u32 append_walk(struct scratch *s)
{
    u32 off = s->len;
    u32 pos = s->pos;
    opaque(pos);
    if (off > EV_VAR_MASK || pos > PATH_END)
        return 0;
    opaque(off);                                      /* keep the bound on the register that is used */
    u32 n = PATH_END - pos;
    opaque(n);
    bpf_probe_read_kernel(&s->ev[off & EV_VAR_MASK], n & PATH_MASK, &s->path[pos & PATH_MASK]);
    s->len = off + (n & PATH_MASK);
    return n & PATH_MASK;
}

/* Append a NUL-terminated string (without its NUL); returns its length. */
static __always_inline u32 append_str(struct scratch *s, u64 ptr, int user)
{
    u32 off = s->len;
    if (off > EV_VAR_MASK || !ptr)
        return 0;
    long n = user ? bpf_probe_read_user_str(&s->ev[off & EV_VAR_MASK], STR_MAX, (void *)ptr)
                  : bpf_probe_read_kernel_str(&s->ev[off & EV_VAR_MASK], STR_MAX, (void *)ptr);
    if (n <= 1)
        return 0;
    n -= 1;
    opaque(n);
    s->len = off + (n & STR_MASK);
    return n & STR_MASK;
}

/* A file slot from a struct file: true path, inode identity. Returns file->f_mode. */
static __always_inline u32 slot_file(struct scratch *s, struct file_info *fi, u64 file)
{
    fi->str_len = 0;
    fi->path_len = 0;
    if (!file) {
        fi->path_flags = PF_UNRESOLVED;
        return 0;
    }
    WIN_BUF(f, W_FILE);
    READ_WIN(f, W_FILE, file);
    u64 dentry = WIN64(f, W_FILE, O_FILE_PATH_DENTRY);
    WIN_BUF(d, W_DENTRY);
    READ_WIN(d, W_DENTRY, dentry);
    fill_inode(fi, WIN64(d, W_DENTRY, O_DENTRY_INODE));
    u32 flags = walk(s, dentry, WIN64(f, W_FILE, O_FILE_PATH_MNT));
    if (!WIN64(d, W_DENTRY, O_DENTRY_HASH_PPREV) && WIN64(d, W_DENTRY, O_DENTRY_PARENT) != dentry)
        flags |= PF_DELETED;                          /* d_unhashed: unlinked while open */
    fi->path_flags = flags;
    fi->path_len = append_walk(s);
    return WIN32(f, W_FILE, O_FILE_MODE);
}

/* The directory a path string is relative to: the cwd for AT_FDCWD, else the dirfd's file (0: no such fd).
 * Needs s->task read for the current task. */
static __always_inline int dfd_base(struct scratch *s, s64 dfd, u64 *dentry, u64 *vfsmnt)
{
    if ((int)dfd == AT_FDCWD_) {
        WIN_BUF(fs, W_FS);
        READ_WIN(fs, W_FS, TASK64(s, O_TASK_FS));
        *vfsmnt = WIN64(fs, W_FS, O_FS_PWD + O_PATH_MNT);
        *dentry = WIN64(fs, W_FS, O_FS_PWD + O_PATH_DENTRY);
        return 1;
    }
    u64 file = fd_file(s, (int)dfd);
    if (!file)
        return 0;
    WIN_BUF(f, W_FILE);
    READ_WIN(f, W_FILE, file);
    *vfsmnt = WIN64(f, W_FILE, O_FILE_PATH_MNT);
    *dentry = WIN64(f, W_FILE, O_FILE_PATH_DENTRY);
    return 1;
}

/* A file slot from a path string the caller passed (no fd yet, or gone): the caller's string, plus
 * the true path of the directory it is relative to (dirfd or cwd) when it is relative. Userspace
 * joins and canonicalises them and clears PF_UNRESOLVED when it can (paths.py). `user`: the string is in
 * the caller's memory; else a kernel copy of it (io_uring keeps the names it copied at submission). */
static __always_inline void slot_path_string(struct scratch *s, struct file_info *fi, s64 dfd, u64 ptr, int user)
{
    u32 off = s->len;
    fi->path_len = 0;
    fi->path_flags = PF_UNRESOLVED;
    fi->str_len = append_str(s, ptr, user);
    if (fi->str_len && s->ev[off & EV_VAR_MASK] == '/')
        return;                                       /* absolute: relative to the process root */
    u64 dentry, vfsmnt;
    if (!dfd_base(s, dfd, &dentry, &vfsmnt))
        return;
    fi->path_flags |= walk(s, dentry, vfsmnt);
    fi->path_len = append_walk(s);
}

static __always_inline void slot_user_path(struct scratch *s, struct file_info *fi, s64 dfd, u64 uptr)
{
    slot_path_string(s, fi, dfd, uptr, 1);
}

/* --------------------------------------------------------------------------- sys_enter / sys_exit */
/* The current syscall's arguments, from the user registers saved at its entry (bpf_task_pt_regs, 5.15+,
 * gives a typed pointer: plain loads). A sys_exit hook reads them there instead of a sys_enter hook
 * stashing them: tracing a syscall at one tracepoint instead of two halves what the tracing machinery
 * costs it. The registers are this thread's own (no other thread can change them); the user memory they
 * point to is read at sys_exit either way. O_SYSARG0..5 come from BTF per architecture (offsets.py). */
static long (*task_pt_regs_)(void *task) = (void *)175;   /* BPF_FUNC_task_pt_regs */
static __always_inline char *syscall_regs(void)
{
    return (char *)task_pt_regs_(bpf_get_current_task_btf());
}
#define SYSARG(regs, n) KLOAD(u64, (regs) + O_SYSARG##n)

/* A sys_exit hook's own arguments, read from the saved registers into `struct inflight in` once the
 * pipeline's own pids are dropped. In the argument expressions REG(n) is argument n as a long or a
 * pointer, REGI(n) as an int, REGU(n) as an unsigned int and REGMODE(n) as a umode_t, as the kernel
 * casts its parameters (the upper half of a register holding an int is not the
 * caller's). One tracepoint per syscall instead of two; the user memory the arguments point to was read at
 * sys_exit either way. */
#define EXIT_ARGS(kind, sc_, x0, x1, x2, x3, x4, x5) \
    struct inflight in; \
    if (drop_ignored(kind)) \
        return 0; \
    { \
        char *regs_ = syscall_regs(); \
        in.sc = (sc_); \
        in.pad = (kind); \
        in.a[0] = (x0); \
        in.a[1] = (x1); \
        in.a[2] = (x2); \
        in.a[3] = (x3); \
        in.a[4] = (x4); \
        in.a[5] = (x5); \
    }
#define REG(n) SYSARG(regs_, n)
#define REGI(n) ((u64)(s64)(s32)SYSARG(regs_, n))
#define REGU(n) ((u64)(u32)SYSARG(regs_, n))
#define REGMODE(n) ((u64)(u16)SYSARG(regs_, n))    /* umode_t */

/* ------------------------------------------------------------------------------ thread snapshots */
/* Each thread's credentials, namespaces and root as of their last change, so that a sys_exit hook can say
 * what a call changed without a sys_enter hook (any sys_enter hook puts ~30 ns on every syscall of every
 * process here, watched or not). A thread's credentials and namespaces change only through the calls the
 * privilege sensor traces (commit_creds acts on the calling thread), exec and clone, so the snapshot taken
 * at fork (the child's), at exec and at each of those calls' exit is the state before the next call.
 * Threads older than the collector are seeded from /proc (threadsnap.py), which gives no kernel pointers:
 * root_mnt 0 = the root is not known. Dropped at the thread's exit. */
struct cred_snap {        /* 56 bytes */
    u32 uid, euid, suid, fsuid;
    u32 gid, egid, sgid, fsgid;
    u64 cap_inh, cap_perm, cap_eff;
};

#define SNAP_NS 8         /* mnt uts ipc pid_for_children net time_for_children cgroup user */

struct thread_snap {      /* 104 bytes */
    struct cred_snap cred;
    u32 ns[SNAP_NS];
    u64 root_mnt, root_dentry;
};

BPF_F_TABLE("hash", u32, struct thread_snap, thread_snaps, THREAD_SNAPS, BPF_F_NO_PREALLOC);

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

static __always_inline void root_read(struct thread_snap *t, u64 task)
{
    u64 fs = rd64(task + O_TASK_FS);
    t->root_mnt = rd64(fs + O_FS_ROOT + O_PATH_MNT);
    t->root_dentry = rd64(fs + O_FS_ROOT + O_PATH_DENTRY);
}

/* Snapshot `task` (thread `tid`) whole. */
static __always_inline void snap_take(u32 tid, u64 task)
{
    struct thread_snap zero = {};
    struct thread_snap *t = thread_snaps.lookup_or_try_init(&tid, &zero);
    if (!t)
        return;                                       /* full (THREAD_SNAPS threads): the change is reported as unknown */
    cred_read(&t->cred, rd64(task + O_TASK_CRED));
    ns_read(t->ns, task);
    root_read(t, task);
}

#endif /* FIMSTREAM_H */
