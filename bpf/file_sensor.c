/* File sensor: open/create, unlink/rmdir, rename, chmod, chown on syscall tracepoints.
 *
 * Arguments are saved at sys_enter (stash) and the record is built at sys_exit, where the result is
 * known: a successful open is resolved from the returned fd (task->files->fdt->fd[ret]->f_path), so
 * its path is the kernel's true path whatever string, dirfd, symlink or mount the caller used. Calls
 * that take a path but return no fd carry the caller's string (read at sys_exit, as Falco does) plus
 * the true path of the directory it is relative to; userspace canonicalises them (paths.py).
 *
 * Phase 2 filters go between unstash() and begin(): inode/basename approvers and the parent-directory
 * discarder need only the dentry; the LPM prefix approver runs on s->path after walk().
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

/* ------------------------------------------------------------------------------------------ open */
TP(syscalls, sys_enter_openat)
{
    return stash(RK_OPEN, SC_OPENAT, args->dfd, (u64)args->filename, args->flags, args->mode, 0, 0);
}

TP(syscalls, sys_enter_open)
{
    return stash(RK_OPEN, SC_OPEN, AT_FDCWD_, (u64)args->filename, args->flags, args->mode, 0, 0);
}

TP(syscalls, sys_enter_creat)
{
    /* creat(path, mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode) */
    return stash(RK_OPEN, SC_CREAT, AT_FDCWD_, (u64)args->pathname, 01 | 0100 | 01000, args->mode, 0, 0);
}

TP(syscalls, sys_enter_openat2)
{
    u64 how[3] = {};
    bpf_probe_read_user(how, sizeof(how), (void *)args->how);  /* struct open_how {flags, mode, resolve} */
    return stash(RK_OPEN, SC_OPENAT2, args->dfd, (u64)args->filename, how[0], how[1], how[2], 0);
}

static __always_inline int open_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in))
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_OPEN, sizeof(struct open_body), ret);
    struct open_body *b = BODY(open_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->flags = in.a[2];
    b->mode = in.a[3];
    b->resolve = in.a[4];
    b->pad = 0;
    __builtin_memset(&b->f, 0, sizeof(b->f));
    if (ret >= 0)
        b->fmode = slot_file(s, &b->f, fd_file(s, ret));
    else {
        b->fmode = 0;
        slot_user_path(s, &b->f, in.a[0], in.a[1]);
    }
    emit(s, RK_OPEN);
    return 0;
}

TP(syscalls, sys_exit_openat) { return open_exit(args->ret); }
TP(syscalls, sys_exit_open) { return open_exit(args->ret); }
TP(syscalls, sys_exit_creat) { return open_exit(args->ret); }
TP(syscalls, sys_exit_openat2) { return open_exit(args->ret); }

/* ---------------------------------------------------------------------------------- unlink, rmdir */
TP(syscalls, sys_enter_unlinkat)
{
    return stash(RK_UNLINK, SC_UNLINKAT, args->dfd, (u64)args->pathname, args->flag, 0, 0, 0);
}

TP(syscalls, sys_enter_unlink)
{
    return stash(RK_UNLINK, SC_UNLINK, AT_FDCWD_, (u64)args->pathname, 0, 0, 0, 0);
}

TP(syscalls, sys_enter_rmdir)
{
    return stash(RK_UNLINK, SC_RMDIR, AT_FDCWD_, (u64)args->pathname, 0x200 /* AT_REMOVEDIR */, 0, 0, 0);
}

static __always_inline int unlink_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in))
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_UNLINK, sizeof(struct unlink_body), ret);
    struct unlink_body *b = BODY(unlink_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->flags = (u32)in.a[2];
    b->pad = 0;
    __builtin_memset(&b->f, 0, sizeof(b->f));
    slot_user_path(s, &b->f, in.a[0], in.a[1]);
    emit(s, RK_UNLINK);
    return 0;
}

TP(syscalls, sys_exit_unlinkat) { return unlink_exit(args->ret); }
TP(syscalls, sys_exit_unlink) { return unlink_exit(args->ret); }
TP(syscalls, sys_exit_rmdir) { return unlink_exit(args->ret); }

/* ----------------------------------------------------------------------------------------- rename */
TP(syscalls, sys_enter_renameat2)
{
    return stash(RK_RENAME, SC_RENAMEAT2, args->olddfd, (u64)args->oldname, args->newdfd,
                 (u64)args->newname, args->flags, 0);
}

TP(syscalls, sys_enter_renameat)
{
    return stash(RK_RENAME, SC_RENAMEAT, args->olddfd, (u64)args->oldname, args->newdfd,
                 (u64)args->newname, 0, 0);
}

TP(syscalls, sys_enter_rename)
{
    return stash(RK_RENAME, SC_RENAME, AT_FDCWD_, (u64)args->oldname, AT_FDCWD_, (u64)args->newname, 0, 0);
}

static __always_inline int rename_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in))
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_RENAME, sizeof(struct rename_body), ret);
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
    return 0;
}

TP(syscalls, sys_exit_renameat2) { return rename_exit(args->ret); }
TP(syscalls, sys_exit_renameat) { return rename_exit(args->ret); }
TP(syscalls, sys_exit_rename) { return rename_exit(args->ret); }

/* ------------------------------------------------------------------------------------------ chmod */
TP(syscalls, sys_enter_fchmodat)
{
    return stash(RK_CHMOD, SC_FCHMODAT, args->dfd, (u64)args->filename, args->mode, 0, 0, 0);
}

TP(syscalls, sys_enter_fchmodat2)
{
    return stash(RK_CHMOD, SC_FCHMODAT2, args->dfd, (u64)args->filename, args->mode, args->flags, 0, 0);
}

TP(syscalls, sys_enter_chmod)
{
    return stash(RK_CHMOD, SC_CHMOD, AT_FDCWD_, (u64)args->filename, args->mode, 0, 0, 0);
}

TP(syscalls, sys_enter_fchmod)
{
    /* fd-based: a0 = fd, a1 = 0 marks "resolve from the fd" */
    return stash(RK_CHMOD, SC_FCHMOD, args->fd, 0, args->mode, 0, 0, 0);
}

static __always_inline int chmod_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in))
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_CHMOD, sizeof(struct chmod_body), ret);
    struct chmod_body *b = BODY(chmod_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->mode = (u32)in.a[2];
    b->flags = (u32)in.a[3];
    __builtin_memset(&b->f, 0, sizeof(b->f));
    if (in.sc == SC_FCHMOD)
        slot_file(s, &b->f, fd_file(s, (int)in.a[0]));
    else
        slot_user_path(s, &b->f, in.a[0], in.a[1]);
    emit(s, RK_CHMOD);
    return 0;
}

TP(syscalls, sys_exit_fchmodat) { return chmod_exit(args->ret); }
TP(syscalls, sys_exit_fchmodat2) { return chmod_exit(args->ret); }
TP(syscalls, sys_exit_chmod) { return chmod_exit(args->ret); }
TP(syscalls, sys_exit_fchmod) { return chmod_exit(args->ret); }

/* ------------------------------------------------------------------------------------------ chown */
TP(syscalls, sys_enter_fchownat)
{
    return stash(RK_CHOWN, SC_FCHOWNAT, args->dfd, (u64)args->filename, args->user, args->group, args->flag, 0);
}

TP(syscalls, sys_enter_chown)
{
    return stash(RK_CHOWN, SC_CHOWN, AT_FDCWD_, (u64)args->filename, args->user, args->group, 0, 0);
}

TP(syscalls, sys_enter_lchown)
{
    return stash(RK_CHOWN, SC_LCHOWN, AT_FDCWD_, (u64)args->filename, args->user, args->group,
                 0x100 /* AT_SYMLINK_NOFOLLOW */, 0);
}

TP(syscalls, sys_enter_fchown)
{
    return stash(RK_CHOWN, SC_FCHOWN, args->fd, 0, args->user, args->group, 0, 0);
}

static __always_inline int chown_exit(long ret)
{
    struct inflight in;
    if (!unstash(&in))
        return 0;
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_CHOWN, sizeof(struct chown_body), ret);
    struct chown_body *b = BODY(chown_body, s);
    b->sc = in.sc;
    b->dfd = (s32)in.a[0];
    b->uid = (u32)in.a[2];
    b->gid = (u32)in.a[3];
    b->flags = (u32)in.a[4];
    b->pad = 0;
    __builtin_memset(&b->f, 0, sizeof(b->f));
    if (in.sc == SC_FCHOWN)
        slot_file(s, &b->f, fd_file(s, (int)in.a[0]));
    else
        slot_user_path(s, &b->f, in.a[0], in.a[1]);
    emit(s, RK_CHOWN);
    return 0;
}

TP(syscalls, sys_exit_fchownat) { return chown_exit(args->ret); }
TP(syscalls, sys_exit_chown) { return chown_exit(args->ret); }
TP(syscalls, sys_exit_lchown) { return chown_exit(args->ret); }
TP(syscalls, sys_exit_fchown) { return chown_exit(args->ret); }
