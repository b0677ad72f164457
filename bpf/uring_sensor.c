/* io_uring sensor: file operations submitted through io_uring, which never pass a syscall tracepoint.
 *
 * io_uring:io_uring_submit_req fires once per request after the kernel prepared it (the SQE is read
 * and, for an open, the name already copied: io_open.filename), in the submitting task, the SQPOLL
 * thread or an io-wq worker of the same process; io_uring:io_uring_complete fires when its CQE is
 * posted, with the same request pointer.
 *
 *  - openat/openat2: the submission is kept in uring_pending (keyed by the request) and the record is
 *    built at completion, where the result is known: the true path is walked from the new fd (or from
 *    the registered-file slot of a direct descriptor); a failed open carries its name and the base
 *    directory, like a failed openat(2): the name as the kernel copied it at submission (uring_names), not
 *    what the caller's memory holds by the completion. A request that will post no CQE when it succeeds
 *    (IOSQE_CQE_SKIP_SUCCESS) is reported at submission. A completion whose submission was not seen
 *    (submitted before the collector started, or its entry evicted) is reported from the fd alone.
 *  - unlinkat, renameat, mkdirat, symlinkat, linkat: like opens (kept at submission, reported at
 *    completion), with their names (kept like an open's) and base directories, resolved in userspace like the
 *    syscalls' (RK_URING_PATH). They also keep the filter's epochs and hazards as their syscalls do
 *    (filter.h): a successful renameat bumps the discarder epoch and an unlinkat the removal epoch, a
 *    symlinkat records the new link as a hazard, a renameat or linkat carries a symlink's hazard to its
 *    new name (tail__uring_hazard).
 *    One that will post no completion (IOSQE_CQE_SKIP_SUCCESS) does it at submission, assuming the worst.
 *  - read/write family: reported at submission, because a request with IOSQE_CQE_SKIP_SUCCESS never
 *    posts a completion: the file comes from the fd table (or the registered files) at that moment.
 *    Only regular files; the first read and the first write of each open file (uring_seen, per struct
 *    file, renewed after URING_AGAIN_NS), the rest are counted as discarded.
 */
#include "fimstream.h"

#define URS_COMPLETE 0    /* built at completion: retval is the result */
#define URS_SUBMIT 1      /* built at submission: no completion will say more (CQE skipped), retval 0 */
#define URS_NO_SUBMIT 2   /* completion of a submission we did not see: flags from the opened file */
#define URING_READ 1
#define URING_WRITE 2
#define URING_AGAIN_NS (30ULL * 1000000000ULL)
#define FFS_MASK_ (~3ULL) /* io_rsrc_node.file_ptr: low bits are FFS_NOWAIT / FFS_ISREG */
#define S_IFMT_U 0170000
#define S_IFREG_U 0100000

struct uring_pending {    /* an open (or a path operation) between its submission and its completion */
    u32 sc;               /* opens: SC_IO_URING_OPENAT(2); path operations: 0 */
    s32 dfd;
    u64 flags;
    u64 mode;
    u64 resolve;
    u32 file_slot;        /* direct descriptor: slot + 1 (IORING_FILE_INDEX_ALLOC: any); 0 = a normal fd */
    u32 op;               /* IORING_OP_* */
    u64 uptr;             /* the name in the submitter's memory (struct filename.uptr) */
    u64 user_data;
    u64 uptr2;            /* path operations: the second name (new path, link path) */
    s32 dfd2;
    u32 kstr;             /* KSTR_*: uptr / uptr2 point to the kernel's copy (uring_names), not user memory */
    u64 tag;              /* the submission's time, also in its uring_names entries */
};

struct uring_path_body {  /* RK_URING_PATH */
    u32 op;               /* IORING_OP_UNLINKAT / RENAMEAT / MKDIRAT / SYMLINKAT / LINKAT */
    s32 dfd;              /* base of the first name */
    s32 dfd2;             /* base of the second name (symlinkat: of the link) */
    u32 flags;            /* AT_REMOVEDIR, RENAME_*, AT_SYMLINK_FOLLOW */
    u32 mode;             /* mkdirat */
    u32 stage;            /* URS_COMPLETE, URS_SUBMIT */
    u64 user_data;
    struct file_info f;   /* unlink, mkdir: the path; rename: source; link: existing file; symlink: the link */
    struct file_info t;   /* rename: destination; link: the new link; symlink: the target, as written */
};

struct uring_open_body {  /* RK_URING_OPEN */
    u32 sc;               /* SC_IO_URING_OPENAT / SC_IO_URING_OPENAT2 */
    s32 dfd;
    u64 flags;
    u64 mode;
    u64 resolve;
    u32 fmode;            /* f_mode of the opened file (FMODE_CREATED: a create) */
    u32 file_slot;
    u64 user_data;
    u32 stage;            /* URS_* */
    u32 pad;
    struct file_info f;
};

struct uring_rw_body {    /* RK_URING_RW */
    u32 op;               /* IORING_OP_* */
    s32 fd;               /* the fd, or the registered-file index */
    u32 fixed;
    u32 f_flags;          /* file->f_flags (O_ACCMODE, O_APPEND...) */
    u64 user_data;
    struct file_info f;
};

struct uring_seen_v {
    u32 ops;              /* URING_READ | URING_WRITE already reported for this open file */
    u32 pad;
    u64 when;
    u64 dentry;           /* the file's: a struct file freed (closed by close(2), unseen) and reused for */
};                        /* another file is not taken for the one reported */

/* LRU: an entry whose completion never comes (or a file never closed through io_uring) ages out. */
BPF_TABLE("lru_hash", u64, struct uring_pending, uring_pending, 4096);

/* The names as the kernel copied them at submission (struct filename.name), for the completion: the kernel
 * acts on its copies, and io_uring lets the caller reuse its memory as soon as the request is submitted, so
 * the strings in the caller's memory at completion may name other files (rewritten on purpose while the
 * request waits: linked behind a timeout, or in an io-wq worker). The kernel frees its copies before the
 * completion, so they are copied here. Keyed by request | name index (0, 1; requests are 8-byte aligned);
 * an entry whose tag is not the pending request's (evicted and reused) is not used: the caller's memory is
 * read then, as before. LRU of 1,024 names of PATH_MAX: 4 MiB. */
#define KSTR_1 1
#define KSTR_2 2
struct uring_name {
    u64 tag;
    u32 len;              /* with the NUL; 0: not copied */
    u32 pad;
    char s[STR_MAX];
};
BPF_TABLE("lru_hash", u64, struct uring_name, uring_names, 1024);
BPF_PERCPU_ARRAY(uring_name_buf, struct uring_name, 1);  /* staging: too big for the stack */

static __always_inline void name_keep(u64 req, u32 idx, u64 filename, u64 tag)
{
    u32 zero = 0;
    struct uring_name *n = uring_name_buf.lookup(&zero);
    if (!n || !filename)
        return;
    long r = bpf_probe_read_kernel_str(n->s, STR_MAX, (void *)rd64(filename + O_FILENAME_NAME));
    n->tag = tag;
    n->len = r > 0 ? r : 0;
    u64 key = req | idx;
    uring_names.update(&key, n);
}

/* At submission: the request's names, kept for its completion. */
static __always_inline void names_keep(u64 req, struct uring_pending *p, u64 fn1, u64 fn2)
{
    p->tag = bpf_ktime_get_ns();
    name_keep(req, 0, fn1, p->tag);
    if (fn2)
        name_keep(req, 1, fn2, p->tag);
}

/* At submission, for a record built there (no completion will come): the kernel's copies are alive. */
static __always_inline void names_now(struct uring_pending *p, u64 fn1, u64 fn2)
{
    u64 k1 = fn1 ? rd64(fn1 + O_FILENAME_NAME) : 0, k2 = fn2 ? rd64(fn2 + O_FILENAME_NAME) : 0;
    if (k1) {
        p->uptr = k1;
        p->kstr |= KSTR_1;
    }
    if (k2) {
        p->uptr2 = k2;
        p->kstr |= KSTR_2;
    }
}

/* At completion: the kept copies in place of the caller's pointers. */
static __always_inline void names_use(u64 req, struct uring_pending *p)
{
    u64 key = req;
    struct uring_name *n = uring_names.lookup(&key);
    if (n && n->tag == p->tag && n->len) {
        p->uptr = (u64)n->s;
        p->kstr |= KSTR_1;
    }
    if (!p->uptr2)
        return;
    key = req | 1;
    n = uring_names.lookup(&key);
    if (n && n->tag == p->tag && n->len) {
        p->uptr2 = (u64)n->s;
        p->kstr |= KSTR_2;
    }
}

static __always_inline void names_forget(u64 req, struct uring_pending *p)
{
    u64 key = req;
    uring_names.delete(&key);
    if (p->uptr2) {
        key = req | 1;
        uring_names.delete(&key);
    }
}
BPF_TABLE("lru_hash", u64, struct uring_seen_v, uring_seen, 16384);

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

static __always_inline int path_record(struct uring_pending *p, s64 res, u32 stage);
static __always_inline int path_complete(void *ctx, struct uring_pending *p, s64 res, u64 req);
static __always_inline int path_unseen(u64 req, u8 op);

/* ------------------------------------------------------------------ the filter's epochs and hazards */
/* A path operation changes the namespace exactly like its syscall, so it keeps in-kernel filtering sound the
 * same way (file_sensor.c: rename_judge, unlink_exit, TAIL(hazard)): a rename bumps the discarder epoch,
 * an unlink or rmdir the removal epoch, a new symlink, or a symlink (or a directory holding one) renamed or linked to a new name,
 * is recorded as a hazard. Done in the kernel where the result is known (at completion), before the CQE is
 * published: a submitter that waits for it is judged with them (userspace would be too late). The hazards
 * run in a tail call of their own (two lexical paths, trie lookups and the loop of hazard_add() on top of
 * the record's building would strain io_uring_complete's budget); uring_sensor.c has its own program array
 * and tail, so it does not depend on the file sensor being loaded.
 *
 * The completion runs in the submitter, an io-wq worker or the SQPOLL thread of the submitting process (or
 * a worker of that thread): io_uring creates them with CLONE_VM | CLONE_FS | CLONE_FILES and the parent's
 * namespaces, so the current task's memory holds the user strings, its fs_struct resolves a relative path
 * against the submitter's cwd and root, its fd table holds the dirfd, and its mount namespace is the
 * submitter's: key_string() works there as at a sys_exit. Where something cannot be placed the
 * conservative route is taken: hazards_full() (every path string goes to userspace). The names are the
 * kernel's own copies kept from the submission (uring_names), so a caller that rewrites its memory while
 * the request waits misnames neither the record nor the hazard; only when a kept copy was evicted (over
 * 1,024 names in flight) is the caller's memory read at completion. */
#define T_URING_HAZARD 0
#define UH_JUDGE 1                /* f->in.pad, what is left to do: rename, link: which names to record */
#define UH_DST 2                  /* record the destination (a2, a3) */
#define UH_SRC 4                  /* record the first name (a0, a1) */
#define UH_MUST 8                 /* ... and if it cannot be placed, trust no path string (a new symlink) */
#define RENAME_EXCHANGE_U 2
BPF_PROG_ARRAY(uring_tails, 1);

/* f->kind: the IORING_OP_*; f->in: a0 dirfd + a1 string of the first name (symlinkat: the link), a2 + a3
 * of the second (rename: the destination, link: the new link), a4 the flags, pad the steps left. One step
 * per call, then the tail calls itself for the next: each step alone is a small program for the verifier
 * (the lookups of two names and two hazard_add() loops in one program, with every combination of outcomes
 * explored, exceed its budget). */
int tail__uring_hazard(void *ctx)
{
    TAIL_STATE(s, f, task, in);
    u32 op = f->kind;
    u32 todo = in.pad;
    u32 next;
    if (todo & UH_JUDGE) {
        /* rename, link: what was at the source (a symlink, under one, above one) is at the destination now
         * (a source we cannot place may be one). With RENAME_EXCHANGE what was at the destination is at
         * the source too. The steps go through map memory: the verifier then explores the rest once. */
        next = 0;
        if (key_string_in(s, f, RK_URING_PATH, SLOT_FILE, in.a[0], in.a[1], task, !(in.a[5] & 1)) < 0
            || hazard_related(f, task))
            next = UH_DST;
        *(volatile u32 *)&f->in.pad = next;
        if (op == IOP_RENAMEAT && (in.a[4] & RENAME_EXCHANGE_U)
            && (key_string_in(s, f, RK_URING_PATH, SLOT_TARGET, in.a[2], in.a[3], task, !(in.a[5] & 2)) < 0
                || hazard_related(f, task)))
            *(volatile u32 *)&f->in.pad |= UH_SRC;
    } else if (todo & UH_DST) {
        if (key_string_in(s, f, RK_URING_PATH, SLOT_TARGET, in.a[2], in.a[3], task, !(in.a[5] & 2)) >= 0)
            hazard_add(f, task);
        *(volatile u32 *)&f->in.pad = todo & ~UH_DST;
    } else if (todo & UH_SRC) {
        if (key_string_in(s, f, RK_URING_PATH, SLOT_FILE, in.a[0], in.a[1], task, !(in.a[5] & 1)) >= 0)
            hazard_add(f, task);
        else if (todo & UH_MUST)
            hazards_full();                           /* a symlink we cannot place: trust no path string */
        *(volatile u32 *)&f->in.pad = 0;
    } else {
        return 0;
    }
    if (!*(volatile u32 *)&f->in.pad)
        return 0;
    uring_tails.call(ctx, T_URING_HAZARD);
    hazards_full();                                   /* the chain was cut short: what is left cannot be placed */
    return 0;
}

/* The discarder epochs, before the record is emitted (as rename_judge, unlink_exit): a directory moved; or
 * a file or directory went, and its dentry and inode may come back as another (the removal epoch). */
static __always_inline void path_epoch(u32 op)
{
    if (op == IOP_RENAMEAT)
        bump_epoch();
    else if (op == IOP_UNLINKAT)
        ps_bump(PS_REPOCH);
}

/* The hazards of a successful renameat, symlinkat or linkat, in the tail call. Last thing a program does: a
 * tail call that works does not return. Blind: at the submission of one that will post no completion, which
 * would say neither whether its source was a symlink nor when it moved: assume it was. */
static __always_inline void path_hazards(void *ctx, struct uring_pending *p, int blind)
{
    if (p->op != IOP_RENAMEAT && p->op != IOP_SYMLINKAT && p->op != IOP_LINKAT)
        return;
    struct fstate *f = fstate_get();
    if (f) {
        __builtin_memset(&f->in, 0, sizeof(f->in));
        if (p->op == IOP_SYMLINKAT) {             /* uptr is the link's text; the link is the second name */
            f->in.a[0] = (u64)(s64)p->dfd2;
            f->in.a[1] = p->uptr2;
            f->in.a[5] = (p->kstr & KSTR_2) ? 1 : 0;
            f->in.pad = UH_SRC | UH_MUST;
        } else {
            f->in.a[0] = (u64)(s64)p->dfd;
            f->in.a[1] = p->uptr;
            f->in.a[2] = (u64)(s64)p->dfd2;
            f->in.a[3] = p->uptr2;
            f->in.a[4] = p->flags;
            f->in.a[5] = p->kstr;                     /* KSTR_1: a[1], KSTR_2: a[3] */
            f->in.pad = UH_JUDGE;
            if (blind)
                f->in.pad = UH_DST | (p->op == IOP_RENAMEAT && (p->flags & RENAME_EXCHANGE_U) ? UH_SRC : 0);
        }
        f->kind = p->op;
        uring_tails.call(ctx, T_URING_HAZARD);
    }
    hazards_full();                                   /* no tail program (not loaded): nothing can be placed */
}

/* A registered file of the request's ring: ctx->file_table.data.nodes[idx]->file_ptr. */
static __always_inline u64 uring_fixed_file(u64 req, u32 idx)
{
    u64 ctx = rd64(req + O_IO_KIOCB_CTX);
    if (!ctx || idx >= rd32(ctx + O_CTX_FILES_NR))
        return 0;
    u64 node = rd64(rd64(ctx + O_CTX_FILES_NODES) + (u64)idx * 8);
    return node ? rd64(node + O_RSRC_NODE_FILE_PTR) & FFS_MASK_ : 0;
}

/* current->files->fdt->fd[fd] without a record in progress (fd_file() needs begin()'s task window). */
static __always_inline u64 uring_fd_file(u64 task, s32 fd)
{
    if (fd < 0)
        return 0;
    u64 fdt = rd64(rd64(task + O_TASK_FILES) + O_FILES_FDT);
    if ((u32)fd >= rd32(fdt + O_FDT_MAX_FDS))
        return 0;
    return rd64(rd64(fdt + O_FDT_FD) + (u64)fd * 8);
}

static __always_inline void uring_mark(u64 file, u32 ops)
{
    struct uring_seen_v v = {};
    v.ops = ops;
    v.when = bpf_ktime_get_boot_ns();
    v.dentry = rd64(file + O_FILE_PATH_DENTRY);
    uring_seen.update(&file, &v);
}

/* ------------------------------------------------------------------------------------------- open */
static __always_inline int open_record(struct uring_pending *p, s64 res, u32 stage, u64 req)
{
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_URING_OPEN, sizeof(struct uring_open_body), res);
    struct uring_open_body *b = BODY(uring_open_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = p->sc;
    b->dfd = p->dfd;
    b->flags = p->flags;
    b->mode = p->mode;
    b->resolve = p->resolve;
    b->file_slot = p->file_slot;
    b->user_data = p->user_data;
    b->stage = stage;
    u64 file = 0;
    if (stage != URS_SUBMIT && res >= 0) {
        if (!p->file_slot)
            file = fd_file(s, res);
        else  /* a direct descriptor: IORING_FILE_INDEX_ALLOC returns the slot, otherwise it was slot + 1 */
            file = uring_fixed_file(req, p->file_slot == 0xFFFFFFFF ? (u32)res : p->file_slot - 1);
    }
    if (file) {
        b->fmode = slot_file(s, &b->f, file);
        if (stage == URS_NO_SUBMIT)
            b->flags = rd32(file + O_FILE_F_FLAGS);
        uring_mark(file, URING_READ);  /* a new open: its reads are this open's, its first write is new */
    } else if (stage != URS_NO_SUBMIT) {
        slot_path_string(s, &b->f, p->dfd, p->uptr, !(p->kstr & KSTR_1));
    } else {
        b->f.path_flags = PF_UNRESOLVED;
    }
    emit(s, RK_URING_OPEN);
    return 0;
}

static __always_inline int open_submit(u64 req, u8 op, u64 rflags, u64 user_data)
{
    struct uring_pending p = {};
    u64 o = req + O_IO_KIOCB_CMD;
    p.sc = op == IOP_OPENAT2 ? SC_IO_URING_OPENAT2 : SC_IO_URING_OPENAT;
    p.op = op;
    p.dfd = (s32)rd32(o + O_IO_OPEN_DFD);
    p.file_slot = rd32(o + O_IO_OPEN_FILE_SLOT);
    u64 how[3] = {};
    bpf_probe_read_kernel(how, sizeof(how), (void *)(o + O_IO_OPEN_HOW));  /* struct open_how {flags, mode, resolve} */
    p.flags = how[0];
    p.mode = how[1];
    p.resolve = how[2];
    u64 fn = rd64(o + O_IO_OPEN_FILENAME);
    p.uptr = rd64(fn + O_FILENAME_UPTR);
    p.user_data = user_data;
    if (!(rflags & (1ULL << REQ_F_CQE_SKIP_BIT_))) {
        names_keep(req, &p, fn, 0);
        if (uring_pending.update(&req, &p) == 0)
            return 0;     /* reported when it completes */
    }
    names_now(&p, fn, 0);
    return open_record(&p, 0, URS_SUBMIT, req);
}

static __always_inline int open_complete(void *ctx, u64 req, s64 res)
{
    struct uring_pending p;
    struct uring_pending *in = uring_pending.lookup(&req);
    if (in) {
        __builtin_memcpy(&p, in, sizeof(p));
        uring_pending.delete(&req);
        names_use(req, &p);
        if (!p.sc)
            return path_complete(ctx, &p, res, req);
        open_record(&p, res, URS_COMPLETE, req);
        names_forget(req, &p);
        return 0;
    }
    u8 op = 0;
    bpf_probe_read_kernel(&op, 1, (void *)(req + O_IO_KIOCB_OPCODE));
    if (res == 0 && (op == IOP_RENAMEAT || op == IOP_SYMLINKAT || op == IOP_LINKAT || op == IOP_UNLINKAT))
        return path_unseen(req, op);
    if (op != IOP_OPENAT && op != IOP_OPENAT2)
        return 0;
    if (drop_ignored(RK_URING_OPEN))
        return 0;
    tally(RK_URING_OPEN, C_SEEN);
    __builtin_memset(&p, 0, sizeof(p));
    p.sc = op == IOP_OPENAT2 ? SC_IO_URING_OPENAT2 : SC_IO_URING_OPENAT;
    p.dfd = AT_FDCWD_;
    p.file_slot = rd32(req + O_IO_KIOCB_CMD + O_IO_OPEN_FILE_SLOT);
    return open_record(&p, res, URS_NO_SUBMIT, req);
}

/* -------------------------------------------------------------------------------- path operations */
static __always_inline int path_record(struct uring_pending *p, s64 res, u32 stage)
{
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, RK_URING_PATH, sizeof(struct uring_path_body), res);
    struct uring_path_body *b = BODY(uring_path_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->op = p->op;
    b->dfd = p->dfd;
    b->dfd2 = p->dfd2;
    b->flags = (u32)p->flags;
    b->mode = (u32)p->mode;
    b->stage = stage;
    b->user_data = p->user_data;
    if (p->op == IOP_SYMLINKAT) {  /* the target is text, not resolved against anything */
        slot_path_string(s, &b->f, p->dfd2, p->uptr2, !(p->kstr & KSTR_2));
        b->t.path_flags = PF_UNRESOLVED;
        b->t.str_len = append_str(s, p->uptr, !(p->kstr & KSTR_1));
    } else {
        slot_path_string(s, &b->f, p->dfd, p->uptr, !(p->kstr & KSTR_1));
        if (p->uptr2)
            slot_path_string(s, &b->t, p->dfd2, p->uptr2, !(p->kstr & KSTR_2));
    }
    emit(s, RK_URING_PATH);
    return 0;
}

static __always_inline int path_complete(void *ctx, struct uring_pending *p, s64 res, u64 req)
{
    if (res == 0)
        path_epoch(p->op);
    path_record(p, res, URS_COMPLETE);
    if (res == 0 && (p->op == IOP_RENAMEAT || p->op == IOP_SYMLINKAT || p->op == IOP_LINKAT))
        path_hazards(ctx, p, 0);                      /* its tail call reads the kept names: left to the LRU */
    else
        names_forget(req, p);
    return 0;
}

/* A successful path operation whose submission was not kept (submitted before the collector started, its
 * entry evicted): the epochs still can be bumped, but its names are gone (the
 * kernel freed its copies, the user pointers were in the entry): no hazard can be placed. */
static __always_inline int path_unseen(u64 req, u8 op)
{
    if (ignored(bpf_get_current_pid_tgid() >> 32))
        return 0;                                     /* as the syscall hooks: an ignored caller changes nothing */
    path_epoch(op);
    if (op != IOP_UNLINKAT)
        hazards_full();
    return 0;
}

static __always_inline int path_submit(void *ctx, u64 req, u8 op, u64 rflags, u64 user_data)
{
    struct uring_pending p = {};
    u64 o = req + O_IO_KIOCB_CMD;
    u64 fn1 = 0, fn2 = 0;     /* struct filename */
    p.op = op;
    p.user_data = user_data;
    if (op == IOP_UNLINKAT) {
        p.dfd = (s32)rd32(o + O_IO_UNLINK_DFD);
        p.flags = rd32(o + O_IO_UNLINK_FLAGS);
        fn1 = rd64(o + O_IO_UNLINK_FILENAME);
    } else if (op == IOP_MKDIRAT) {
        p.dfd = (s32)rd32(o + O_IO_MKDIR_DFD);
        u16 mode = 0;
        bpf_probe_read_kernel(&mode, 2, (void *)(o + O_IO_MKDIR_MODE));
        p.mode = mode;
        fn1 = rd64(o + O_IO_MKDIR_FILENAME);
    } else {              /* renameat (io_rename), symlinkat and linkat (io_link): same members */
        u32 od = op == IOP_RENAMEAT ? O_IO_RENAME_OLD_DFD : O_IO_LINK_OLD_DFD;
        u32 nd = op == IOP_RENAMEAT ? O_IO_RENAME_NEW_DFD : O_IO_LINK_NEW_DFD;
        u32 op1 = op == IOP_RENAMEAT ? O_IO_RENAME_OLDPATH : O_IO_LINK_OLDPATH;
        u32 op2 = op == IOP_RENAMEAT ? O_IO_RENAME_NEWPATH : O_IO_LINK_NEWPATH;
        u32 fl = op == IOP_RENAMEAT ? O_IO_RENAME_FLAGS : O_IO_LINK_FLAGS;
        p.dfd = (s32)rd32(o + od);
        p.dfd2 = (s32)rd32(o + nd);
        p.flags = rd32(o + fl);
        fn1 = rd64(o + op1);
        fn2 = rd64(o + op2);
    }
    p.uptr = fn1 ? rd64(fn1 + O_FILENAME_UPTR) : 0;
    p.uptr2 = fn2 ? rd64(fn2 + O_FILENAME_UPTR) : 0;
    if (!(rflags & (1ULL << REQ_F_CQE_SKIP_BIT_))) {
        names_keep(req, &p, fn1, fn2);
        if (uring_pending.update(&req, &p) == 0)
            return 0;
    }
    names_now(&p, fn1, fn2);
    /* No completion will come when it succeeds (IOSQE_CQE_SKIP_SUCCESS), nor will it say when it ran: the
     * epoch now (a discarder learned between this and the operation itself survives it: the one gap left),
     * the hazards now, assuming the worst (a hazard recorded early is only a path string sent to userspace).
     * (Not kept for another reason: its completion finds no entry, path_unseen.) */
    path_epoch(op);
    path_record(&p, 0, URS_SUBMIT);
    path_hazards(ctx, &p, 1);
    return 0;
}

/* ----------------------------------------------------------------------------------- read, write */
static __always_inline int rw_submit(u64 req, u8 op, u32 what, u64 rflags, u64 user_data)
{
    if (drop_ignored(RK_URING_RW))
        return 0;
    tally(RK_URING_RW, C_SEEN);
    s32 fd = (s32)rd32(req + O_IO_KIOCB_CQE_FD);
    u32 fixed = (rflags & (1ULL << REQ_F_FIXED_FILE_BIT_)) != 0;
    u64 task = bpf_get_current_task();
    u64 file = fixed ? uring_fixed_file(req, (u32)fd) : uring_fd_file(task, fd);
    if (!file || (rd32(rd64(file + O_FILE_INODE) + O_INODE_MODE) & S_IFMT_U) != S_IFREG_U) {
        tally(RK_URING_RW, C_FILTERED);  /* sockets, pipes, devices: not file events */
        return 0;
    }
    u64 now = bpf_ktime_get_boot_ns();
    u64 dentry = rd64(file + O_FILE_PATH_DENTRY);
    struct uring_seen_v *seen = uring_seen.lookup(&file);
    u32 same = seen && seen->dentry == dentry && now - seen->when < URING_AGAIN_NS;
    if (same && (seen->ops & what)) {
        tally(RK_URING_RW, C_DISCARDED);  /* this open file's first read/write was reported already */
        return 0;
    }
    struct uring_seen_v v = {};
    v.ops = what | (same ? seen->ops : 0);
    v.when = now;
    v.dentry = dentry;
    uring_seen.update(&file, &v);
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    begin(s, task, RK_URING_RW, sizeof(struct uring_rw_body), 0);
    struct uring_rw_body *b = BODY(uring_rw_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->op = op;
    b->fd = fd;
    b->fixed = fixed;
    b->f_flags = rd32(file + O_FILE_F_FLAGS);
    b->user_data = user_data;
    slot_file(s, &b->f, file);
    emit(s, RK_URING_RW);
    return 0;
}

/* IORING_OP_CLOSE: the file's next open starts over (a syscall close() is not seen here; the entry then
 * ages out after URING_AGAIN_NS). */
static __always_inline int close_submit(u64 req, u64 rflags)
{
    u64 o = req + O_IO_KIOCB_CMD;
    u32 slot = rd32(o + O_IO_CLOSE_FILE_SLOT);
    u64 file = slot ? uring_fixed_file(req, slot - 1) : uring_fd_file(bpf_get_current_task(), (s32)rd32(o + O_IO_CLOSE_FD));
    if (file)
        uring_seen.delete(&file);
    return 0;
}

TP(io_uring, io_uring_submit_req)
{
    u64 req = (u64)args->req;
    u8 op = args->opcode;
    if (op == IOP_OPENAT || op == IOP_OPENAT2) {
        if (drop_ignored(RK_URING_OPEN))
            return 0;
        tally(RK_URING_OPEN, C_SEEN);
        return open_submit(req, op, args->flags, args->user_data);
    }
    if (op == IOP_READ || op == IOP_READV || op == IOP_READ_FIXED || op == IOP_READV_FIXED || op == IOP_READ_MULTISHOT)
        return rw_submit(req, op, URING_READ, args->flags, args->user_data);
    if (op == IOP_WRITE || op == IOP_WRITEV || op == IOP_WRITE_FIXED || op == IOP_WRITEV_FIXED)
        return rw_submit(req, op, URING_WRITE, args->flags, args->user_data);
    if (op == IOP_CLOSE)
        return close_submit(req, args->flags);
    if (op == IOP_UNLINKAT || op == IOP_RENAMEAT || op == IOP_MKDIRAT || op == IOP_SYMLINKAT || op == IOP_LINKAT) {
        if (drop_ignored(RK_URING_PATH))
            return 0;
        tally(RK_URING_PATH, C_SEEN);
        return path_submit(args, req, op, args->flags, args->user_data);
    }
    return 0;
}

TP(io_uring, io_uring_complete)
{
    u64 req = (u64)args->req;
    if (!req)
        return 0;         /* an auxiliary CQE (multishot, msg_ring...): no request behind it */
    return open_complete(args, req, args->res);
}
