/* File sensor: open/create, unlink/rmdir, rename, chmod, chown, the first write of each open, truncate,
 * link, symlink, mkdir, mknod, setxattr, shared writable mmap, memfd_create, mount/umount/move_mount, on
 * syscall tracepoints, filtered in the kernel by the rules (filter.h) before a record is built.
 *
 * Each call is traced at sys_exit alone, its arguments read from the registers saved at its entry
 * (EXIT_ARGS, syscall_regs: one tracepoint per syscall instead of two), and judged and built there, where
 * the result is known: a successful open is resolved from the returned fd
 * (task->files->fdt->fd[ret]->f_path), so its path is the kernel's true path whatever string, dirfd, symlink or mount the caller used. Calls
 * that take a path but return no fd carry the caller's string (read at sys_exit, as Falco does) plus the
 * true path of the directory it is relative to; userspace canonicalises them (paths.py). `seen` is counted
 * at sys_exit with the exact event type (an open that created its file is a create).
 *
 * Writes: only the first write to a file per open is an event (`written`: struct file * -> policy
 * generation, forgotten when a new open reuses the pointer), judged and recorded at sys_exit with its
 * result. No hook here is at sys_enter: any sys_enter hook costs every syscall of every process.
 */
#include "fimstream.h"

struct open_body {        /* RK_OPEN */
    u32 sc;
    s32 dfd;
    u64 flags;
    u64 mode;
    u64 resolve;          /* openat2 RESOLVE_* */
    u32 fmode;            /* file->f_mode of the opened file (FMODE_CREATED tells a create) */
    u32 pad;
    struct file_info f;
};

struct unlink_body {      /* RK_UNLINK */
    u32 sc;
    s32 dfd;
    u32 flags;            /* AT_REMOVEDIR for rmdir */
    u32 pad;
    struct file_info f;
};

struct rename_body {      /* RK_RENAME */
    u32 sc;
    u32 flags;            /* RENAME_NOREPLACE / EXCHANGE / WHITEOUT */
    s32 olddfd;
    s32 newdfd;
    struct file_info src;
    struct file_info dst;
};

struct chmod_body {       /* RK_CHMOD */
    u32 sc;
    s32 dfd;
    u32 mode;
    u32 flags;
    struct file_info f;
};

struct chown_body {       /* RK_CHOWN */
    u32 sc;
    s32 dfd;
    u32 uid;
    u32 gid;
    u32 flags;
    u32 pad;
    struct file_info f;
};

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

struct fileop_body {      /* RK_WRITE, RK_TRUNCATE, RK_MKDIR, RK_MKNOD, RK_SETXATTR, RK_MMAP, RK_MEMFD_CREATE, RK_UMOUNT */
    u32 sc;
    s32 dfd;
    u64 flags;            /* mmap: prot | flags << 32; write: the file's f_flags */
    u64 mode;             /* mkdir/mknod mode */
    u64 aux;              /* truncate length, mknod dev, mmap length, setxattr size */
    u16 extra_len;        /* extra string after the slot's bytes: xattr name, memfd name */
    u16 pad;
    u32 pad2;
    struct file_info f;
};

struct fileop2_body {     /* RK_LINK, RK_SYMLINK, RK_MOUNT (mount, move_mount) */
    u32 sc;
    s32 dfd;
    s32 dfd2;
    u16 extra_len;        /* fs type of a mount, after both slots' bytes */
    u16 pad;
    u64 flags;
    u64 aux;
    struct file_info src; /* link: the existing file; symlink: the link created; mount: the source */
    struct file_info dst; /* link: the new link; symlink: the link text as written; mount: the mount point */
};

#define S_IFMT_ 0170000
#define S_IFREG_ 0100000
#define S_IFBLK_ 0060000
#define MS_BIND_ 4096
#define MS_MOVE_ 8192

/* Hazard bookkeeping after a successful symlink, link, rename or mount runs in a tail call: a program of
 * its own for the verifier (two lexical paths, lookups and a loop over the path on top of the event's
 * own filtering would exceed its budget). The event's arguments travel in fstate. */
#define TAIL(name) int tail__##name(void *ctx)
#define T_HAZARD 0
#define T_HAZARD_ADD 1
#define HZ_DST 1                  /* f->in.pad, the names left to record: the destination (a2, a3) */
#define HZ_SRC 2                  /* the source (a0, a1) */
#define RENAME_EXCHANGE_ 2
BPF_PROG_ARRAY(file_tails, 4);

static __always_inline void hazards_after(void *ctx, struct fstate *f, struct inflight *in, u32 kind)
{
    __builtin_memcpy(&f->in, in, sizeof(*in));
    f->kind = kind;
    file_tails.call(ctx, T_HAZARD);
}

TAIL(hazard)
{
    TAIL_STATE(s, f, task, in);
    u32 kind = f->kind;
    if (kind == RK_SYMLINK) {                         /* the new link: a path through it may lead anywhere */
        if (key_string(s, f, kind, SLOT_FILE, in.a[0], in.a[1], task, 0) >= 0) {
            hazard_add(f, task);
        } else {
            hazards_full();                           /* a symlink we cannot place: trust no path string */
        }
    } else if (kind == RK_MOUNT) {                    /* a new mount point: what lies below changed */
        if (key_string(s, f, kind, SLOT_TARGET, in.a[2], in.a[3], task, 0) >= 0)
            hazard_add(f, task);
    } else {                                          /* rename, link: a symlink reached under a new name */
        /* what was at the source (a symlink, under one, above one; or a name we cannot place) is at the
         * destination now; with RENAME_EXCHANGE what was at the destination is at the source too. Decided
         * before either is recorded, then recorded one per call (two hazard_add loops in one program
         * exceed the verifier's budget). */
        u32 todo = 0;
        if (key_string(s, f, kind, SLOT_FILE, in.a[0], in.a[1], task, 0) < 0 || hazard_related(f, task))
            todo = HZ_DST;
        *(volatile u32 *)&f->in.pad = todo;
        if (kind == RK_RENAME && (in.a[4] & RENAME_EXCHANGE_)
            && (key_string(s, f, kind, SLOT_TARGET, in.a[2], in.a[3], task, 0) < 0 || hazard_related(f, task)))
            *(volatile u32 *)&f->in.pad |= HZ_SRC;
        if (*(volatile u32 *)&f->in.pad) {
            file_tails.call(ctx, T_HAZARD_ADD);
            hazards_full();                           /* the tail call failed: trust no path string */
        }
    }
    return 0;
}

/* Record the names hazard() decided on (f->in.pad), one per call. */
TAIL(hazard_add)
{
    TAIL_STATE(s, f, task, in);
    u32 kind = f->kind;
    u32 todo = in.pad;
    if (todo & HZ_DST) {
        if (key_string(s, f, kind, SLOT_TARGET, in.a[2], in.a[3], task, 0) >= 0)
            hazard_add(f, task);
        *(volatile u32 *)&f->in.pad = todo & ~HZ_DST;
    } else if (todo & HZ_SRC) {
        if (key_string(s, f, kind, SLOT_FILE, in.a[0], in.a[1], task, 0) >= 0)
            hazard_add(f, task);
        *(volatile u32 *)&f->in.pad = 0;
    }
    if (!*(volatile u32 *)&f->in.pad)
        return 0;
    file_tails.call(ctx, T_HAZARD_ADD);
    hazards_full();
    return 0;
}

/* Forget a struct file's "already written": a new open may reuse a freed pointer. Only a writable open
 * needs it (file_read() has read f->fmode): a stale mark on a read-only file can only hide a write that
 * fails with EBADF, and the f_mode of an open file never gains FMODE_WRITE. Saves an LRU-map delete on
 * every read-only open (~150 ns). */
static __always_inline void forget_written(struct fstate *f, u64 file)
{
    if (!file || !(f->fmode & FMODE_WRITE_))
        return;
    struct fpol *p = policy_of(f, RK_WRITE);
    if (p && p->mode != MODE_DROP)
        written.delete(&file);
}

/* ------------------------------------------------------------------------------------------ open */
/* The hottest hooks there are: opens are traced at sys_exit alone, with their arguments taken from the
 * saved registers (syscall_regs) instead of a sys_enter hook's stash. */
static __always_inline void open_args(struct inflight *in, u32 sc)
{
    char *r = syscall_regs();
    u64 a0 = SYSARG(r, 0), a1 = SYSARG(r, 1), a2 = SYSARG(r, 2), a3 = SYSARG(r, 3);
    in->sc = sc;
    in->a[4] = 0;
    in->a[5] = 0;
    if (sc == SC_OPEN) {                              /* open(path, flags, mode) */
        in->a[0] = AT_FDCWD_;
        in->a[1] = a0;
        in->a[2] = a1;
        in->a[3] = a2;
    } else if (sc == SC_CREAT) {                      /* creat(path, mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode) */
        in->a[0] = AT_FDCWD_;
        in->a[1] = a0;
        in->a[2] = 01 | 0100 | 01000;
        in->a[3] = a1;
    } else if (sc == SC_OPENAT2) {                    /* openat2(dfd, path, struct open_how *{flags, mode, resolve}, size) */
        u64 how[3] = {};
        bpf_probe_read_user(how, sizeof(how), (void *)a2);
        in->a[0] = a0;
        in->a[1] = a1;
        in->a[2] = how[0];
        in->a[3] = how[1];
        in->a[4] = how[2];
    } else {                                          /* openat(dfd, path, flags, mode) */
        in->a[0] = a0;
        in->a[1] = a1;
        in->a[2] = a2;
        in->a[3] = a3;
    }
}

static __always_inline int open_exit(long ret, u32 sc)
{
    if (drop_ignored(RK_OPEN))
        return 0;
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return 0;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    u64 file = 0;
    u32 kind = RK_OPEN;
    if (ret >= 0) {
        file = fd_file_of(task, ret);
        if (file_read(f, file) && (f->fmode & FMODE_CREATED_))
            kind = RK_CREATE;
        forget_written(f, file);
    }
    tally(kind, C_SEEN);
    struct fpol *p = policy_of(f, kind);
    /* most opens are settled by their file alone, before the arguments are read */
    int v = file ? fd_quick(f, p, kind, task) : V_CONTINUE;
    struct inflight in = {};
    u64 flags = 0;
    if (v == V_CONTINUE) {
        open_args(&in, sc);
        flags = in.a[2];
        v = prefilter(p, flags, in.a[3]);
        if (v == V_CONTINUE) {
            if (ret < 0)
                v = str_verdict(s, f, p, kind, SLOT_FILE, in.a[0], in.a[1], flags, task, 0);
            else
                v = file ? fd_verdict(s, f, p, kind, flags, task) : V_UNSURE;
        } else if (v == V_PASS && ret >= 0) {
            v = pass_verdict(f, p, kind, task);
        }
    }
    if (!settle(kind, v))
        return 0;
    forget(f, v, kind);
    struct rec_hdr *h = begin(s, task, RK_OPEN, sizeof(struct open_body), ret);
    h->hflags = hflags_of(v);
    struct open_body *b = BODY(open_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->flags = flags;
    b->mode = in.a[3];
    b->resolve = in.a[4];
    b->pad = 0;
    __builtin_memset(&b->f, 0, sizeof(b->f));
    if (ret >= 0) {
        b->fmode = f->fmode;
        slot_from_state(s, f, &b->f, task);
        if (p && (p->has & HAS_LEARN))
            candidate(f, h);
    } else {
        b->fmode = 0;
        slot_user_path(s, &b->f, in.a[0], in.a[1]);
    }
    emit(s, kind);
    return 0;
}

TP(syscalls, sys_exit_openat) { return open_exit(args->ret, SC_OPENAT); }
TP(syscalls, sys_exit_open) { return open_exit(args->ret, SC_OPEN); }
TP(syscalls, sys_exit_creat) { return open_exit(args->ret, SC_CREAT); }
TP(syscalls, sys_exit_openat2) { return open_exit(args->ret, SC_OPENAT2); }

/* ---------------------------------------------------------------------------------- unlink, rmdir */
static __always_inline int unlink_exit(struct inflight in, long ret)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return 0;
    u64 task = bpf_get_current_task();
    u32 kind = (in.a[2] & 0x200) ? RK_RMDIR : RK_UNLINK;
    if (ret == 0)
        ps_bump(PS_REPOCH);                           /* a dentry and inode may be freed and come back as another */
    filter_begin(f);
    tally(kind, C_SEEN);
    struct fpol *p = policy_of(f, kind);
    int v = prefilter(p, in.a[2], 0);
    if (v == V_CONTINUE)
        v = str_verdict(s, f, p, kind, SLOT_FILE, in.a[0], in.a[1], in.a[2], task, 0);
    if (!settle(kind, v))
        return 0;
    forget(f, v, kind);
    struct rec_hdr *h = begin(s, task, RK_UNLINK, sizeof(struct unlink_body), ret);
    h->hflags = hflags_of(v);
    struct unlink_body *b = BODY(unlink_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->flags = (u32)in.a[2];
    b->pad = 0;
    __builtin_memset(&b->f, 0, sizeof(b->f));
    slot_user_path(s, &b->f, in.a[0], in.a[1]);
    emit(s, kind);
    return 0;
}

TP(syscalls, sys_exit_unlinkat)
{
    EXIT_ARGS(RK_UNLINK, SC_UNLINKAT, REGI(0), REG(1), REGU(2), 0, 0, 0);
    return unlink_exit(in, args->ret);
}

TP(syscalls, sys_exit_unlink)
{
    EXIT_ARGS(RK_UNLINK, SC_UNLINK, AT_FDCWD_, REG(0), 0, 0, 0, 0);
    return unlink_exit(in, args->ret);
}

TP(syscalls, sys_exit_rmdir)
{
    EXIT_ARGS(RK_RMDIR, SC_RMDIR, AT_FDCWD_, REG(0), 0x200 /* AT_REMOVEDIR */, 0, 0, 0);
    return unlink_exit(in, args->ret);
}

/* ----------------------------------------------------------------------------------------- rename */
/* Two path strings: approved when either is, unsure when either is. */
static __always_inline int pair_verdict(struct scratch *s, struct fstate *f, struct fpol *p, u32 kind,
                                        struct inflight *in, u64 flags, u64 task, int raw_target)
{
    int v = str_verdict(s, f, p, kind, SLOT_FILE, in->a[0], in->a[1], flags, task, 0);
    if (v == V_APPROVED)
        return v;
    int w = str_verdict(s, f, p, kind, SLOT_TARGET, in->a[2], in->a[3], flags, task, raw_target);
    if (w == V_APPROVED || w == V_UNSURE)
        return w;
    return v;
}

static __always_inline void rename_judge(struct inflight in, long ret)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    if (ret == 0)
        bump_epoch();                                 /* a directory may have moved: discarders are stale */
    tally(RK_RENAME, C_SEEN);
    struct fpol *p = policy_of(f, RK_RENAME);
    int v = prefilter(p, in.a[4], 0);
    if (v == V_CONTINUE)
        v = pair_verdict(s, f, p, RK_RENAME, &in, in.a[4], task, 0);
    if (!settle(RK_RENAME, v))
        return;
    u32 k2 = RK_RENAME;
    forget(f, v, k2);
    struct rec_hdr *h = begin(s, task, RK_RENAME, sizeof(struct rename_body), ret);
    h->hflags = hflags_of(v);
    struct rename_body *b = BODY(rename_body, s);
    b->sc = in.sc;
    b->flags = (u32)in.a[4];
    b->olddfd = (s32)in.a[0];
    b->newdfd = (s32)in.a[2];
    __builtin_memset(&b->src, 0, sizeof(b->src));
    __builtin_memset(&b->dst, 0, sizeof(b->dst));
    slot_user_path(s, &b->src, in.a[0], in.a[1]);
    slot_user_path(s, &b->dst, in.a[2], in.a[3]);
    emit(s, RK_RENAME);
}

static __always_inline int rename_exit(void *ctx, struct inflight in, long ret)
{
    rename_judge(in, ret);
    struct fstate *f = fstate_get();
    if (ret == 0 && f)
        hazards_after(ctx, f, &in, RK_RENAME);
    return 0;
}

TP(syscalls, sys_exit_renameat2)
{
    EXIT_ARGS(RK_RENAME, SC_RENAMEAT2, REGI(0), REG(1), REGI(2), REG(3), REGU(4), 0);
    return rename_exit(args, in, args->ret);
}

TP(syscalls, sys_exit_renameat)
{
    EXIT_ARGS(RK_RENAME, SC_RENAMEAT, REGI(0), REG(1), REGI(2), REG(3), 0, 0);
    return rename_exit(args, in, args->ret);
}

TP(syscalls, sys_exit_rename)
{
    EXIT_ARGS(RK_RENAME, SC_RENAME, AT_FDCWD_, REG(0), AT_FDCWD_, REG(1), 0, 0);
    return rename_exit(args, in, args->ret);
}

/* ------------------------------------------------------------------------------------------ chmod */
/* One file, by fd (a1 == 0) or by path string: the verdict, with file_read() done for the fd case. */
static __always_inline int one_verdict(struct scratch *s, struct fstate *f, struct fpol *p, u32 kind,
                                       struct inflight *in, u64 flags, u64 mode, u64 task)
{
    int v = prefilter(p, flags, mode);
    if (v == V_PASS && !in->a[1])
        return pass_verdict(f, p, kind, task);
    if (v != V_CONTINUE)
        return v;
    if (!in->a[1])
        return f->dentry ? fd_verdict(s, f, p, kind, flags, task) : V_UNSURE;
    return str_verdict(s, f, p, kind, SLOT_FILE, in->a[0], in->a[1], flags, task, 0);
}

static __always_inline void one_slot(struct scratch *s, struct fstate *f, struct fpol *p, struct rec_hdr *h,
                                     struct file_info *fi, struct inflight *in, u64 task)
{
    __builtin_memset(fi, 0, sizeof(*fi));
    if (!in->a[1] || f->via_fd) {
        slot_from_state(s, f, fi, task);
        if (p && (p->has & HAS_LEARN))
            candidate(f, h);
    } else {
        slot_user_path(s, fi, in->a[0], in->a[1]);
    }
}

static __always_inline int chmod_exit(struct inflight in, long ret)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return 0;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    if (!in.a[1])
        file_read(f, fd_file_of(task, (int)in.a[0]));
    tally(RK_CHMOD, C_SEEN);
    struct fpol *p = policy_of(f, RK_CHMOD);
    int v = one_verdict(s, f, p, RK_CHMOD, &in, in.a[3], in.a[2], task);
    if (!settle(RK_CHMOD, v))
        return 0;
    u32 k2 = RK_CHMOD;
    forget(f, v, k2);
    struct rec_hdr *h = begin(s, task, RK_CHMOD, sizeof(struct chmod_body), ret);
    h->hflags = hflags_of(v);
    struct chmod_body *b = BODY(chmod_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->mode = (u32)in.a[2];
    b->flags = (u32)in.a[3];
    one_slot(s, f, p, h, &b->f, &in, task);
    emit(s, RK_CHMOD);
    return 0;
}

TP(syscalls, sys_exit_fchmodat)
{
    EXIT_ARGS(RK_CHMOD, SC_FCHMODAT, REGI(0), REG(1), REGMODE(2), 0, 0, 0);
    return chmod_exit(in, args->ret);
}

TP(syscalls, sys_exit_fchmodat2)
{
    EXIT_ARGS(RK_CHMOD, SC_FCHMODAT2, REGI(0), REG(1), REGMODE(2), REGU(3), 0, 0);
    return chmod_exit(in, args->ret);
}

TP(syscalls, sys_exit_chmod)
{
    EXIT_ARGS(RK_CHMOD, SC_CHMOD, AT_FDCWD_, REG(0), REGMODE(1), 0, 0, 0);
    return chmod_exit(in, args->ret);
}

TP(syscalls, sys_exit_fchmod)
{
    EXIT_ARGS(RK_CHMOD, SC_FCHMOD, REGU(0), 0, REGMODE(1), 0, 0, 0);
    return chmod_exit(in, args->ret);
}

/* ------------------------------------------------------------------------------------------ chown */
static __always_inline int chown_exit(struct inflight in, long ret)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return 0;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    if (!in.a[1])
        file_read(f, fd_file_of(task, (int)in.a[0]));
    tally(RK_CHOWN, C_SEEN);
    struct fpol *p = policy_of(f, RK_CHOWN);
    int v = one_verdict(s, f, p, RK_CHOWN, &in, in.a[4], 0, task);
    if (!settle(RK_CHOWN, v))
        return 0;
    u32 k2 = RK_CHOWN;
    forget(f, v, k2);
    struct rec_hdr *h = begin(s, task, RK_CHOWN, sizeof(struct chown_body), ret);
    h->hflags = hflags_of(v);
    struct chown_body *b = BODY(chown_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->uid = (u32)in.a[2];
    b->gid = (u32)in.a[3];
    b->flags = (u32)in.a[4];
    b->pad = 0;
    one_slot(s, f, p, h, &b->f, &in, task);
    emit(s, RK_CHOWN);
    return 0;
}

TP(syscalls, sys_exit_fchownat)
{
    EXIT_ARGS(RK_CHOWN, SC_FCHOWNAT, REGI(0), REG(1), REGU(2), REGU(3), REGU(4), 0);
    return chown_exit(in, args->ret);
}

TP(syscalls, sys_exit_chown)
{
    EXIT_ARGS(RK_CHOWN, SC_CHOWN, AT_FDCWD_, REG(0), REGU(1), REGU(2), 0, 0);
    return chown_exit(in, args->ret);
}

TP(syscalls, sys_exit_lchown)
{
    EXIT_ARGS(RK_CHOWN, SC_LCHOWN, AT_FDCWD_, REG(0), REGU(1), REGU(2), 0x100 /* AT_SYMLINK_NOFOLLOW */, 0);
    return chown_exit(in, args->ret);
}

TP(syscalls, sys_exit_fchown)
{
    EXIT_ARGS(RK_CHOWN, SC_FCHOWN, REGU(0), 0, REGU(1), REGU(2), 0, 0);
    return chown_exit(in, args->ret);
}

/* ----------------------------------------------------------------- single-file operations (FILEOP) */
/* in: a0 dirfd or fd, a1 path string (0: the file is fd a0), a2 event flags, a3 mode, a4 aux,
 * a5 extra string (user memory). Judged and recorded at sys_exit. */
static __always_inline int fileop_exit(struct inflight in, long ret, u32 kind, int fd_from_ret)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return 0;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    if (kind == RK_UMOUNT && ret == 0)
        bump_epoch();
    if (fd_from_ret) {                                /* memfd_create: the new file is the result */
        if (ret < 0)
            return 0;
        in.a[0] = ret;
        file_read(f, fd_file_of(task, ret));
        forget_written(f, fd_file_of(task, ret));
    } else if (!in.a[1]) {
        file_read(f, fd_file_of(task, (int)in.a[0]));
    }
    tally(kind, C_SEEN);
    struct fpol *p = policy_of(f, kind);
    int v = one_verdict(s, f, p, kind, &in, in.a[2], in.a[3], task);
    if (kind == RK_UMOUNT && v == V_FILTERED)
        v = V_UNSURE;                                 /* a mount point: userspace resolves it first */
    if (!settle(kind, v))
        return 0;
    forget(f, v, kind);
    struct rec_hdr *h = begin(s, task, kind, sizeof(struct fileop_body), ret);
    h->hflags = hflags_of(v);
    struct fileop_body *b = BODY(fileop_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->flags = in.a[2];
    b->mode = in.a[3];
    b->aux = in.a[4];
    b->pad = 0;
    b->pad2 = 0;
    one_slot(s, f, p, h, &b->f, &in, task);
    b->extra_len = in.a[5] ? append_str(s, in.a[5], 1) : 0;
    emit(s, kind);
    return 0;
}

TP(syscalls, sys_exit_truncate)
{
    EXIT_ARGS(RK_TRUNCATE, SC_TRUNCATE, AT_FDCWD_, REG(0), 0, 0, REG(1), 0);
    return fileop_exit(in, args->ret, RK_TRUNCATE, 0);
}

TP(syscalls, sys_exit_ftruncate)
{
    EXIT_ARGS(RK_TRUNCATE, SC_FTRUNCATE, REGU(0), 0, 0, 0, REG(1), 0);
    return fileop_exit(in, args->ret, RK_TRUNCATE, 0);
}

TP(syscalls, sys_exit_mkdir)
{
    EXIT_ARGS(RK_MKDIR, SC_MKDIR, AT_FDCWD_, REG(0), 0, REGMODE(1), 0, 0);
    return fileop_exit(in, args->ret, RK_MKDIR, 0);
}

TP(syscalls, sys_exit_mkdirat)
{
    EXIT_ARGS(RK_MKDIR, SC_MKDIRAT, REGI(0), REG(1), 0, REGMODE(2), 0, 0);
    return fileop_exit(in, args->ret, RK_MKDIR, 0);
}

TP(syscalls, sys_exit_mknod)
{
    EXIT_ARGS(RK_MKNOD, SC_MKNOD, AT_FDCWD_, REG(0), 0, REGMODE(1), REGU(2), 0);
    return fileop_exit(in, args->ret, RK_MKNOD, 0);
}

TP(syscalls, sys_exit_mknodat)
{
    EXIT_ARGS(RK_MKNOD, SC_MKNODAT, REGI(0), REG(1), 0, REGMODE(2), REGU(3), 0);
    return fileop_exit(in, args->ret, RK_MKNOD, 0);
}

TP(syscalls, sys_exit_setxattr)
{
    EXIT_ARGS(RK_SETXATTR, SC_SETXATTR, AT_FDCWD_, REG(0), REGU(4), 0, REG(3), REG(1));
    return fileop_exit(in, args->ret, RK_SETXATTR, 0);
}

TP(syscalls, sys_exit_lsetxattr)
{
    EXIT_ARGS(RK_SETXATTR, SC_LSETXATTR, AT_FDCWD_, REG(0), REGU(4), 0, REG(3), REG(1));
    return fileop_exit(in, args->ret, RK_SETXATTR, 0);
}

TP(syscalls, sys_exit_fsetxattr)
{
    EXIT_ARGS(RK_SETXATTR, SC_FSETXATTR, REGI(0), 0, REGU(4), 0, REG(3), REG(1));
    return fileop_exit(in, args->ret, RK_SETXATTR, 0);
}

TP(syscalls, sys_exit_setxattrat)
{
    EXIT_ARGS(RK_SETXATTR, SC_SETXATTRAT, REGI(0), REG(1), REGU(2), 0, REG(5), REG(3));
    return fileop_exit(in, args->ret, RK_SETXATTR, 0);
}

TP(syscalls, sys_exit_mmap)
{
    /* mmap(addr, len, prot, flags, fd, off): a file mapped shared and writable, whose writes reach the file
     * without write(2). Most mappings are not: their test comes before anything else. */
    EXIT_ARGS(RK_MMAP, SC_MMAP, REGI(4), 0, REGU(2) | (REGU(3) << 32), 0, REG(1), 0);
    u64 prot = in.a[2], flags = in.a[2] >> 32;
    if ((s64)in.a[0] < 0 || !(prot & 2 /* PROT_WRITE */) || !(flags & 1 /* MAP_SHARED */)
        || (flags & 0x20 /* MAP_ANONYMOUS: no file, whatever the fd */))
        return 0;
    return fileop_exit(in, args->ret, RK_MMAP, 0);
}

TP(syscalls, sys_exit_memfd_create)
{
    EXIT_ARGS(RK_MEMFD_CREATE, SC_MEMFD_CREATE, -1, 0, REGU(1), 0, 0, REG(0));
    return fileop_exit(in, args->ret, RK_MEMFD_CREATE, 1);
}

TP(syscalls, sys_exit_umount)
{
    EXIT_ARGS(RK_UMOUNT, SC_UMOUNT2, AT_FDCWD_, REG(0), REGU(1), 0, 0, 0);
    return fileop_exit(in, args->ret, RK_UMOUNT, 0);
}

/* -------------------------------------------------------------------------------------- write */
/* The first write to a regular file (or block device) per open that wrote something, judged and recorded
 * at sys_exit with its result (bytes written); the fd is read from the saved registers. A failed write
 * changed nothing and does not count as the first. Every later write to the same open file costs the
 * register read, one fd lookup and one hash lookup. (A kill rule stops a write at sys_enter: the
 * enforcement sensor's business.) */
static __always_inline int write_exit(u32 sc, long ret)
{
    if (ret < 0)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (ignored(id >> 32))
        return 0;
    struct fstate *f = fstate_get();
    if (!f)
        return 0;
    filter_begin(f);
    struct fpol *p = policy_of(f, RK_WRITE);
    if (p && p->mode == MODE_DROP)
        return 0;                                     /* no rule needs writes: none is an event */
    s64 fd = (s32)SYSARG(syscall_regs(), 0);
    u64 task = bpf_get_current_task();
    u64 file = fd_file_of(task, fd);
    if (!file)
        return 0;
    u64 mark = (f->epoch >> 40) + 1;                  /* judged again under a new policy */
    u64 *w = written.lookup(&file);
    if (w && *w == mark)
        return 0;
    written.update(&file, &mark);
    if (!file_read(f, file))
        return 0;
    u32 fmt = f->fi.mode & S_IFMT_;
    if (fmt != S_IFREG_ && fmt != S_IFBLK_)
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    tally(RK_WRITE, C_SEEN);
    u64 fflags = rd32(file + O_FILE_FLAGS);
    int v = prefilter(p, fflags, 0);
    if (v == V_CONTINUE)
        v = fd_verdict(s, f, p, RK_WRITE, fflags, task);
    else if (v == V_PASS)
        v = pass_verdict(f, p, RK_WRITE, task);
    if (!settle(RK_WRITE, v))
        return 0;
    u32 k2 = RK_WRITE;
    forget(f, v, k2);
    struct rec_hdr *h = begin(s, task, RK_WRITE, sizeof(struct fileop_body), ret);
    h->hflags = hflags_of(v);
    struct fileop_body *b = BODY(fileop_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = sc;
    b->dfd = fd;
    b->flags = fflags;
    slot_from_state(s, f, &b->f, task);
    if (p && (p->has & HAS_LEARN))
        candidate(f, h);
    emit(s, RK_WRITE);
    return 0;
}

TP(syscalls, sys_exit_write) { return write_exit(SC_WRITE, args->ret); }
TP(syscalls, sys_exit_writev) { return write_exit(SC_WRITEV, args->ret); }
TP(syscalls, sys_exit_pwrite64) { return write_exit(SC_PWRITE64, args->ret); }
TP(syscalls, sys_exit_pwritev) { return write_exit(SC_PWRITEV, args->ret); }
TP(syscalls, sys_exit_pwritev2) { return write_exit(SC_PWRITEV2, args->ret); }

/* ---------------------------------------------------------- two-path operations (FILEOP2) */
/* in: a0 dirfd + a1 string of the first file, a2 dirfd + a3 string of the second, a4 flags, a5 extra string
 * (mount: fs type). symlink: the first file is the link created, the second the link text (raw). */
static __always_inline void fileop2_judge(struct inflight in, long ret, u32 kind)
{
    struct scratch *s = scratch_get();
    struct fstate *f = fstate_get();
    if (!s || !f)
        return;
    u64 task = bpf_get_current_task();
    filter_begin(f);
    if (ret == 0 && kind == RK_MOUNT)
        bump_epoch();                                 /* mount, move_mount: paths below changed */
    tally(kind, C_SEEN);
    struct fpol *p = policy_of(f, kind);
    int v = prefilter(p, in.a[4], 0);
    if (v == V_CONTINUE)
        v = pair_verdict(s, f, p, kind, &in, in.a[4], task, kind == RK_SYMLINK);
    if (kind == RK_MOUNT && v == V_FILTERED)
        v = V_UNSURE;                                 /* mount sources are not always paths: userspace decides */
    if (!settle(kind, v))
        return;
    forget(f, v, kind);
    struct rec_hdr *h = begin(s, task, kind, sizeof(struct fileop2_body), ret);
    h->hflags = hflags_of(v);
    struct fileop2_body *b = BODY(fileop2_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->dfd2 = (s32)in.a[2];
    b->pad = 0;
    b->flags = in.a[4];
    b->aux = 0;
    __builtin_memset(&b->src, 0, sizeof(b->src));
    __builtin_memset(&b->dst, 0, sizeof(b->dst));
    if (kind == RK_MOUNT && in.sc == SC_MOUNT) {
        b->src.path_flags = PF_UNRESOLVED;            /* the source as given: a device, a path or a name */
        b->src.str_len = append_str(s, in.a[1], 1);
    } else {
        slot_user_path(s, &b->src, in.a[0], in.a[1]);
    }
    if (kind == RK_SYMLINK) {
        b->dst.path_flags = PF_UNRESOLVED;            /* the link text, as written */
        b->dst.str_len = append_str(s, in.a[3], 1);
    } else {
        slot_user_path(s, &b->dst, in.a[2], in.a[3]);
    }
    b->extra_len = in.a[5] ? append_str(s, in.a[5], 1) : 0;
    emit(s, kind);
}

static __always_inline int fileop2_exit(void *ctx, struct inflight in, long ret, u32 kind)
{
    fileop2_judge(in, ret, kind);
    struct fstate *f = fstate_get();
    if (ret == 0 && f)
        hazards_after(ctx, f, &in, kind);
    return 0;
}

TP(syscalls, sys_exit_link)
{
    EXIT_ARGS(RK_LINK, SC_LINK, AT_FDCWD_, REG(0), AT_FDCWD_, REG(1), 0, 0);
    return fileop2_exit(args, in, args->ret, RK_LINK);
}

TP(syscalls, sys_exit_linkat)
{
    EXIT_ARGS(RK_LINK, SC_LINKAT, REGI(0), REG(1), REGI(2), REG(3), REGU(4), 0);
    return fileop2_exit(args, in, args->ret, RK_LINK);
}

TP(syscalls, sys_exit_symlink)
{
    EXIT_ARGS(RK_SYMLINK, SC_SYMLINK, AT_FDCWD_, REG(1), AT_FDCWD_, REG(0), 0, 0);
    return fileop2_exit(args, in, args->ret, RK_SYMLINK);
}

TP(syscalls, sys_exit_symlinkat)
{
    EXIT_ARGS(RK_SYMLINK, SC_SYMLINKAT, REGI(1), REG(2), AT_FDCWD_, REG(0), 0, 0);
    return fileop2_exit(args, in, args->ret, RK_SYMLINK);
}

TP(syscalls, sys_exit_mount)
{
    EXIT_ARGS(RK_MOUNT, SC_MOUNT, AT_FDCWD_, REG(0), AT_FDCWD_, REG(1), REG(3), REG(2));
    return fileop2_exit(args, in, args->ret, RK_MOUNT);
}

TP(syscalls, sys_exit_move_mount)
{
    EXIT_ARGS(RK_MOUNT, SC_MOVE_MOUNT, REGI(0), REG(1), REGI(2), REG(3), MS_MOVE_, 0);
    return fileop2_exit(args, in, args->ret, RK_MOUNT);
}
