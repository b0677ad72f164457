/* Enforcement sensor: `actions: [kill]` rules decided in the kernel, bpf_send_signal(SIGKILL) on a match.
 *
 * The rule compiler (fimstream/rules/enforcement.py) turns each kill rule into clauses over exact tests;
 * the collector (enforce_sensor.py) loads them into the maps below. Per event type a program computes
 * the bits of the tests that hold, cheapest first, and stops as soon as no clause can hold any more:
 *   values (flags, mode, uids, chown owner) -> comm -> Kubernetes scope (cgroup id) -> file path ->
 *   executable path -> rename destination
 * A clause matches when all of its `pos` tests hold and none of its `neg` tests.
 *
 * Paths: fd-based calls (write family, mmap, fchmod, fchown, ftruncate), successful opens (at sys_exit,
 * from the new fd) and exec (sched_process_exec, mm->exe_file) use the true path walked from the struct
 * file. Path-string calls (unlink, rename, chmod, chown, truncate) use the caller's string joined to the
 * true path of its dirfd/cwd, read at sys_enter: lexical, a symlink or ".." inside the string is not
 * resolved (leading "./" is skipped). Exact keys are at most 255 bytes, prefixes 254.
 *
 * These programs share tracepoints with the file and process sensors. bcc defines a tracepoint's `args`
 * struct once per module, so they take `void *ctx` and read the arguments at their fixed offsets
 * (16 + 8 * i for syscall tracepoints), and enforce_sensor.py attaches them itself (bcc keeps one
 * perf fd per tracepoint name and would lose the other sensor's).
 */
#include "fimstream.h"

#define ENF(category, event) int enf__##category##__##event(void *ctx)
#define ARG(ctx, i) (*(u64 *)((char *)(ctx) + 16 + 8 * (i)))
#define SIGKILL_ 9
#define FMODE_CREATED_ (1 << 20)
#define ENF_NONE 0xFFFFFFFF

struct enf_vtest {            /* one ValueTest: ((values[value] >> shift) & mask) <op> konst */
    u8 value;                 /* EV_* */
    u8 op;                    /* EOP_* */
    u8 shift;
    u8 pad;
    u32 pad2;
    u64 mask;
    s64 konst;
};

struct enf_clause {
    u64 pos;
    u64 neg;
    u32 rule;                 /* index into the policy's rule ids */
    u32 pad;
};

struct enf_type {             /* everything one event type needs: one lookup */
    u64 file_tests;           /* bits of PathTests on the file slot */
    u64 target_tests;
    u64 exe_tests;
    u64 value_tests;
    u64 comm_tests;
    u64 scope_tests;
    u64 scope_default;        /* truth of each scope test for a cgroup not in enf_scope */
    u32 nclauses;
    u32 gen;                  /* policy generation: userspace maps rule indexes with it */
    u32 lookups;              /* ELK_* bits: which path maps have entries per slot */
    u32 pad;
    struct enf_vtest vt[ENF_NTESTS];
    struct enf_clause cl[ENF_NCLAUSES];
};

struct enf_path_key {         /* exact path or last component; bytes after len are zero */
    u8 type;
    u8 slot;
    u16 len;
    u32 pad;
    char path[ENF_KEY];
};

struct enf_lpm_key {
    u32 prefixlen;            /* bits: (2 + bytes of path) * 8 */
    u8 type;
    u8 slot;
    char path[ENF_PREFIX];
};

struct enf_comm_key {
    u32 type;
    char comm[16];
};

struct enf_scope_key {
    u32 type;
    u32 test;
    u64 cgroup;
};

struct enf_open {             /* open arguments from sys_enter to sys_exit */
    u64 flags;
    u64 mode;
};

struct enf_buf {              /* per-CPU: the file and second paths, and lookup keys */
    char p[ENF_BUF];
    char q[ENF_BUF];
    struct enf_path_key k;
    struct enf_lpm_key l;
    struct enf_comm_key c;
    /* Loop results live here, not in registers: a register the verifier knows exactly in each
     * iteration (bits set so far, where a search stopped) makes every exit a new state to verify;
     * a value reloaded from map memory is just "some number" and the states merge. */
    u64 acc;
    u32 start;
    u32 len;
    u32 plen;                 /* bytes in p and q (kept here between stages for the same reason) */
    u32 qlen;
};

struct enf_req {              /* one syscall as the decision sees it; hooks fill it, enf_decide_tail reads it */
    u32 et;                   /* ET_* */
    u32 sc;                   /* ESC_* (0: exec, not a syscall) */
    u32 src;                  /* where the file comes from: SRC_* */
    u32 pad;
    s64 fd;                   /* SRC_FD, SRC_OPEN_EXIT */
    u64 flags;
    u64 mode;
    u64 ouid;
    u64 ogid;
    u64 file;                 /* struct file *, resolved by enf_decide_tail */
    u64 str;                  /* SRC_STR: the caller's path string, relative to dfd */
    s64 dfd;
    u64 str2;                 /* rename destination */
    s64 dfd2;
};

#define SRC_FD 1              /* an fd argument */
#define SRC_STR 2             /* a path string */
#define SRC_EXE 3             /* current->mm->exe_file (exec) */
#define SRC_OPEN_EXIT 4       /* the fd an open returned: open, or create when FMODE_CREATED */

struct enforce_body {         /* RK_ENFORCE; variable part: file path, then target path */
    u32 action;               /* 1 = kill */
    u32 rule;
    u32 et;
    u32 sc;
    u32 gen;
    u16 path_len;
    u16 target_len;
    u64 flags;
    u64 mode;
};

BPF_ARRAY(enf_types, struct enf_type, ENF_NTYPES);
BPF_HASH(enf_paths, struct enf_path_key, u64, ENF_PATHS_MAX);
BPF_HASH(enf_names, struct enf_path_key, u64, ENF_PATHS_MAX);
BPF_LPM_TRIE(enf_prefixes, struct enf_lpm_key, u64, ENF_PATHS_MAX);
BPF_HASH(enf_comms, struct enf_comm_key, u64, 1024);
BPF_HASH(enf_scope, struct enf_scope_key, u8, ENF_SCOPE_MAX);
BPF_HASH(enf_open_inflight, u32, struct enf_open, INFLIGHT_MAX);
BPF_PERCPU_ARRAY(enf_counters, u64, ENC_N);
BPF_PERCPU_ARRAY(enf_bufs, struct enf_buf, 1);
BPF_PERCPU_ARRAY(enf_scratch, struct scratch, 1);

static __always_inline void enf_count(u32 what)
{
    u64 *c = enf_counters.lookup(&what);
    if (c)
        (*c)++;
}

/* Can some clause still hold, given the tests known so far? */
static __always_inline int enf_possible(struct enf_type *T, u64 known, u64 truth)
{
    u32 n = T->nclauses;
#pragma clang loop unroll(disable)
    for (int i = 0; i < ENF_NCLAUSES; i++) {
        if (i >= n)
            break;
        struct enf_clause *c = &T->cl[i];
        if ((c->pos & known & ~truth) || (c->neg & known & truth))
            continue;
        return 1;
    }
    return 0;
}

static __always_inline u32 enf_match(struct enf_type *T, u64 truth)
{
    u32 n = T->nclauses;
#pragma clang loop unroll(disable)
    for (int i = 0; i < ENF_NCLAUSES; i++) {
        if (i >= n)
            break;
        struct enf_clause *c = &T->cl[i];
        if (!(c->pos & ~truth) && !(c->neg & truth))
            return c->rule;
    }
    return ENF_NONE;
}

/* The true path of a struct file into buf; returns its length (0: none). */
static __always_inline u32 enf_file_path(struct scratch *s, char *buf, u64 file)
{
    if (!file)
        return 0;
    WIN_BUF(f, W_FILE);
    READ_WIN(f, W_FILE, file);
    walk(s, WIN64(f, W_FILE, O_FILE_PATH_DENTRY), WIN64(f, W_FILE, O_FILE_PATH_MNT));
    u32 pos = s->pos;
    opaque(pos);
    if (pos > PATH_END)
        return 0;
    u32 n = PATH_END - pos;
    opaque(n);
    bpf_probe_read_kernel(buf, n & PATH_MASK, &s->path[pos & PATH_MASK]);
    return n & PATH_MASK;
}

/* The caller's string joined to the true path of its base (dirfd or cwd) into buf; returns its length
 * (0: none, or longer than the buffer takes). Lexical: symlinks and ".." in the string stay as written. */
static __always_inline u32 enf_str_path(struct scratch *s, struct enf_buf *b, char *buf, s64 dfd, u64 str)
{
    if (!str)
        return 0;
    char two[2] = {};
#pragma clang loop unroll(disable)
    for (int i = 0; i < 4; i++) {                     /* "./x" is "x" */
        if (bpf_probe_read_user(two, 2, (void *)str) || two[0] != '.' || two[1] != '/')
            break;
        str += 2;
    }
    u32 n = 0;
    if (two[0] != '/') {
        u64 dentry, vfsmnt;
        if (!dfd_base(s, dfd, &dentry, &vfsmnt))
            return 0;
        walk(s, dentry, vfsmnt);
        u32 pos = s->pos;
        opaque(pos);
        if (pos > PATH_END)
            return 0;
        n = PATH_END - pos;
        opaque(n);
        bpf_probe_read_kernel(buf, n & PATH_MASK, &s->path[pos & PATH_MASK]);
        n &= PATH_MASK;
        if (n == 1)
            n = 0;                                    /* the base is "/": no "//" */
        buf[n & PATH_MASK] = '/';
        n += 1;
    }
    if (n > PATH_MASK)
        return 0;
    long m = bpf_probe_read_user_str(&buf[n & PATH_MASK], STR_MAX, (void *)str);
    if (m <= 1)
        return 0;
    b->len = n + ((m - 1) & STR_MASK);
#pragma clang loop unroll(disable)
    for (int i = 0; i < 4; i++) {                     /* "dir/" names dir */
        u32 k = b->len;
        if (k <= 1 || k > ENF_BUF)
            break;
        u32 j = k - 1;
        opaque(j);                                    /* else clang drops the mask the verifier needs */
        if (buf[j & (ENF_BUF - 1)] != '/')
            break;
        b->len = k - 1;
    }
    return b->len;                                    /* from map memory: one state whatever the loop did */
}

/* Bits of the path tests (exact, prefix, last component) that hold for buf[0..len). */
static __always_inline u64 enf_path_tests(struct enf_buf *b, struct enf_type *T, u32 et, u32 slot, char *buf,
                                          u32 len)
{
    u64 out = 0;
    u32 have = T->lookups >> (slot * 3);
    if (!len)
        return 0;
    if ((have & ELK_EXACT) && len <= ENF_KEY - 1) {
        __builtin_memset(&b->k, 0, sizeof(b->k));
        b->k.type = et;
        b->k.slot = slot;
        b->k.len = len;
        u32 n = len;
        opaque(n);                                    /* keep the mask: the verifier needs it */
        bpf_probe_read_kernel(b->k.path, n & (ENF_KEY - 1), buf);
        u64 *m = enf_paths.lookup(&b->k);
        if (m)
            out |= *m;
    }
    if (have & ELK_PREFIX) {
        u32 n = len > ENF_PREFIX ? ENF_PREFIX : len;
        __builtin_memset(&b->l, 0, sizeof(b->l));
        b->l.prefixlen = (2 + n) * 8;
        b->l.type = et;
        b->l.slot = slot;
        opaque(n);
        bpf_probe_read_kernel(b->l.path, n & (ENF_KEY - 1), buf);
        u64 *m = enf_prefixes.lookup(&b->l);
        if (m)
            out |= *m;
    }
    if (have & ELK_NAME) {
        b->start = 0;
#pragma clang loop unroll(disable)
        for (u32 i = 1; i <= ENF_KEY; i++) {
            if (i > len)
                break;
            if (buf[(len - i) & (ENF_BUF - 1)] == '/') {
                b->start = len - i + 1;
                break;
            }
        }
        u32 start = b->start;
        if (start > len)
            return out;
        u32 n = len - start;
        if (n && n <= ENF_KEY - 1) {
            __builtin_memset(&b->k, 0, sizeof(b->k));
            b->k.type = et;
            b->k.slot = slot;
            b->k.len = n;
            opaque(n);
            bpf_probe_read_kernel(b->k.path, n & (ENF_KEY - 1), &buf[start & (ENF_BUF - 1)]);
            u64 *m = enf_names.lookup(&b->k);
            if (m)
                out |= *m;
        }
    }
    return out;
}

static __always_inline u64 enf_value(u64 *v, u32 idx)
{
    switch (idx) {
    case EV_FLAGS: return v[0];
    case EV_MODE: return v[1];
    case EV_UID: return v[2];
    case EV_GID: return v[3];
    case EV_EUID: return v[4];
    case EV_EGID: return v[5];
    case EV_OWNER_UID: return v[6];
    case EV_OWNER_GID: return v[7];
    }
    return 0;
}

static __always_inline int enf_cmp(s64 x, u32 op, s64 k)
{
    switch (op) {
    case EOP_EQ: return x == k;
    case EOP_NE: return x != k;
    case EOP_LT: return x < k;
    case EOP_LE: return x <= k;
    case EOP_GT: return x > k;
    case EOP_GE: return x >= k;
    }
    return 0;
}

static __always_inline u64 enf_value_tests(struct scratch *s, struct enf_buf *b, struct enf_type *T,
                                           struct enf_req *r)
{
    u64 v[8];
    WIN_BUF(cred, W_CRED);
    READ_WIN(cred, W_CRED, TASK64(s, O_TASK_CRED));
    v[0] = r->flags;
    v[1] = r->mode;
    v[2] = WIN32(cred, W_CRED, O_CRED_UID);
    v[3] = WIN32(cred, W_CRED, O_CRED_GID);
    v[4] = WIN32(cred, W_CRED, O_CRED_EUID);
    v[5] = WIN32(cred, W_CRED, O_CRED_EGID);
    v[6] = r->ouid;
    v[7] = r->ogid;
    b->acc = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < ENF_NTESTS; i++) {
        if (!((T->value_tests >> i) & 1))
            continue;
        struct enf_vtest *t = &T->vt[i];
        s64 x = (s64)((enf_value(v, t->value) >> (t->shift & 63)) & t->mask);
        if (enf_cmp(x, t->op, t->konst))
            b->acc |= 1ULL << i;
    }
    return b->acc;
}

static __always_inline u64 enf_scope_tests(struct enf_buf *b, struct enf_type *T, u32 et)
{
    struct enf_scope_key key = {};
    key.type = et;
    key.cgroup = bpf_get_current_cgroup_id();
    b->acc = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < ENF_NTESTS; i++) {
        if (!((T->scope_tests >> i) & 1))
            continue;
        key.test = i;
        u8 *v = enf_scope.lookup(&key);
        if (v ? *v : (T->scope_default >> i) & 1)
            b->acc |= 1ULL << i;
    }
    return b->acc;
}

/* Decide one call; on a match: SIGKILL to the caller's process, and an RK_ENFORCE record. */
static __always_inline int enf_decide(struct enf_req *r)
{
    u32 et = r->et;
    struct enf_type *T = enf_types.lookup(&et);
    if (!T || !T->nclauses)
        return 0;
    if (ignored(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct scratch *s = enf_scratch.lookup(&(u32){0});
    struct enf_buf *b = enf_bufs.lookup(&(u32){0});
    if (!s || !b)
        return 0;
    enf_count(ENC_CHECKS);
    u64 task = bpf_get_current_task();
    READ_WIN(s->task, W_TASK, task);
    u64 known = 0, truth = 0;
    if (T->value_tests) {
        truth |= enf_value_tests(s, b, T, r);
        known |= T->value_tests;
    }
    if (T->comm_tests) {
        __builtin_memset(&b->c, 0, sizeof(b->c));
        b->c.type = et;
        bpf_get_current_comm(b->c.comm, sizeof(b->c.comm));
        u64 *m = enf_comms.lookup(&b->c);
        if (m)
            truth |= *m & T->comm_tests;
        known |= T->comm_tests;
    }
    if (T->scope_tests) {
        truth |= enf_scope_tests(b, T, et);
        known |= T->scope_tests;
    }
    if (!enf_possible(T, known, truth))
        return 0;
    b->plen = 0;
    b->qlen = 0;
    if (T->file_tests) {
        u32 plen = r->file ? enf_file_path(s, b->p, r->file) : enf_str_path(s, b, b->p, r->dfd, r->str);
        b->plen = plen;
        if (!plen)
            enf_count(ENC_NO_PATH);
        truth |= enf_path_tests(b, T, et, ES_FILE, b->p, plen) & T->file_tests;
        known |= T->file_tests;
        if (!enf_possible(T, known, truth))
            return 0;
    }
    if (T->exe_tests) {
        u64 exe = rd64(TASK64(s, O_TASK_MM) + O_MM_EXE_FILE);
        u32 elen = enf_file_path(s, b->q, exe);
        truth |= enf_path_tests(b, T, et, ES_EXE, b->q, elen) & T->exe_tests;
        known |= T->exe_tests;
        if (!enf_possible(T, known, truth))
            return 0;
    }
    if (T->target_tests) {
        u32 qlen = enf_str_path(s, b, b->q, r->dfd2, r->str2);
        b->qlen = qlen;
        truth |= enf_path_tests(b, T, et, ES_TARGET, b->q, qlen) & T->target_tests;
    }
    u32 rule = enf_match(T, truth);
    if (rule == ENF_NONE)
        return 0;
    long sent = bpf_send_signal(SIGKILL_);
    enf_count(sent == 0 ? ENC_KILLS : ENC_SIGNAL_FAILED);
    begin(s, task, RK_ENFORCE, sizeof(struct enforce_body), sent);
    struct enforce_body *body = (struct enforce_body *)(s->ev + sizeof(struct rec_hdr));
    body->action = 1;
    body->rule = rule;
    body->et = et;
    body->sc = r->sc;
    body->gen = T->gen;
    body->flags = r->flags;
    body->mode = r->mode;
    body->path_len = 0;
    body->target_len = 0;
    u32 plen = b->plen, qlen = b->qlen;
    u32 off = s->len;
    if (plen && off <= EV_VAR_MASK) {
        bpf_probe_read_kernel(&s->ev[off & EV_VAR_MASK], plen & PATH_MASK, b->p);
        body->path_len = plen & PATH_MASK;
        s->len = off + (plen & PATH_MASK);
    }
    off = s->len;
    if (qlen && off <= EV_VAR_MASK && !T->exe_tests) {
        bpf_probe_read_kernel(&s->ev[off & EV_VAR_MASK], qlen & PATH_MASK, b->q);
        body->target_len = qlen & PATH_MASK;
        s->len = off + (qlen & PATH_MASK);
    }
    emit(s, RK_ENFORCE);
    return 0;
}

/* Cheap gate for the hooks: is any kill clause loaded for this type? */
static __always_inline int enf_active(u32 et)
{
    struct enf_type *T = enf_types.lookup(&et);
    return T && T->nclauses;
}

/* The decision is one program, reached by a tail call from every hook: compiled and verified once
 * instead of once per hook (34 inlined copies cost the module seconds of compile time). */
BPF_PERCPU_ARRAY(enf_reqs, struct enf_req, 1);
BPF_PROG_ARRAY(enf_tail, 1);

static __always_inline int enf_submit(void *ctx, struct enf_req *r)
{
    u32 zero = 0;
    struct enf_req *q = enf_reqs.lookup(&zero);
    if (!q)
        return 0;
    __builtin_memcpy(q, r, sizeof(*q));
    enf_tail.call(ctx, 0);
    return 0;                                         /* only when the decision program is not loaded */
}

int enf_decide_tail(void *ctx)
{
    u32 zero = 0;
    struct enf_req *q = enf_reqs.lookup(&zero);
    if (!q)
        return 0;
    struct enf_req r;
    __builtin_memcpy(&r, q, sizeof(r));
    if (r.src != SRC_STR) {
        struct scratch *s = enf_scratch.lookup(&zero);
        if (!s)
            return 0;
        READ_WIN(s->task, W_TASK, bpf_get_current_task());
        r.file = r.src == SRC_EXE ? rd64(TASK64(s, O_TASK_MM) + O_MM_EXE_FILE) : fd_file(s, r.fd);
        if (!r.file)
            return 0;
        if (r.src == SRC_OPEN_EXIT) {
            r.et = (rd32(r.file + O_FILE_MODE) & FMODE_CREATED_) ? ET_CREATE : ET_OPEN;
            if (!enf_active(r.et))
                return 0;
        }
    }
    return enf_decide(&r);
}

static __always_inline int enf_fd(void *ctx, u32 et, u32 sc, s64 fd, u64 flags, u64 mode, u64 ouid, u64 ogid)
{
    if (!enf_active(et) || fd < 0)
        return 0;
    struct enf_req r = {.et = et, .sc = sc, .src = SRC_FD, .fd = fd, .flags = flags, .mode = mode, .ouid = ouid,
                        .ogid = ogid};
    return enf_submit(ctx, &r);
}

static __always_inline int enf_str(void *ctx, u32 et, u32 sc, s64 dfd, u64 str, u64 flags, u64 mode, u64 ouid,
                                   u64 ogid)
{
    if (!enf_active(et))
        return 0;
    struct enf_req r = {.et = et, .sc = sc, .src = SRC_STR, .flags = flags, .mode = mode, .ouid = ouid,
                        .ogid = ogid, .str = str, .dfd = dfd};
    return enf_submit(ctx, &r);
}

#define OWNER(v) ((u32)(v) == 0xFFFFFFFF ? (u64)-1 : (u64)(u32)(v))

/* ------------------------------------------------------------------------------------ write, mmap */
ENF(syscalls, sys_enter_write) { return enf_fd(ctx, ET_WRITE, ESC_WRITE, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_pwrite64) { return enf_fd(ctx, ET_WRITE, ESC_PWRITE64, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_writev) { return enf_fd(ctx, ET_WRITE, ESC_WRITEV, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_pwritev) { return enf_fd(ctx, ET_WRITE, ESC_PWRITEV, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_pwritev2) { return enf_fd(ctx, ET_WRITE, ESC_PWRITEV2, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_sendfile64) { return enf_fd(ctx, ET_WRITE, ESC_SENDFILE64, (s32)ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_copy_file_range)
{
    return enf_fd(ctx, ET_WRITE, ESC_COPY_FILE_RANGE, (s32)ARG(ctx, 2), 0, 0, 0, 0);
}
ENF(syscalls, sys_enter_splice) { return enf_fd(ctx, ET_WRITE, ESC_SPLICE, (s32)ARG(ctx, 2), 0, 0, 0, 0); }

ENF(syscalls, sys_enter_mmap)
{
    u64 prot = ARG(ctx, 2), flags = ARG(ctx, 3);      /* fd < 0: an anonymous mapping, no file */
    return enf_fd(ctx, ET_MMAP, ESC_MMAP, (s32)ARG(ctx, 4), (flags << 32) | (prot & 0xFFFFFFFF), 0, 0, 0);
}

/* -------------------------------------------------------------------------------------- truncate */
ENF(syscalls, sys_enter_truncate)
{
    return enf_str(ctx, ET_TRUNCATE, ESC_TRUNCATE, AT_FDCWD_, ARG(ctx, 0), 0, 0, 0, 0);
}
ENF(syscalls, sys_enter_ftruncate) { return enf_fd(ctx, ET_TRUNCATE, ESC_FTRUNCATE, (s32)ARG(ctx, 0), 0, 0, 0, 0); }

/* -------------------------------------------------------------------------------- unlink, rmdir */
ENF(syscalls, sys_enter_unlinkat)
{
    u64 flag = (u32)ARG(ctx, 2);
    return enf_str(ctx, flag & 0x200 ? ET_RMDIR : ET_UNLINK, ESC_UNLINKAT, (s32)ARG(ctx, 0), ARG(ctx, 1), flag, 0,
                   0, 0);
}

ENF(syscalls, sys_enter_unlink) { return enf_str(ctx, ET_UNLINK, ESC_UNLINK, AT_FDCWD_, ARG(ctx, 0), 0, 0, 0, 0); }
ENF(syscalls, sys_enter_rmdir) { return enf_str(ctx, ET_RMDIR, ESC_RMDIR, AT_FDCWD_, ARG(ctx, 0), 0x200, 0, 0, 0); }

/* ----------------------------------------------------------------------------------------- rename */
static __always_inline int enf_rename(void *ctx, u32 sc, s64 olddfd, u64 oldname, s64 newdfd, u64 newname,
                                      u64 flags)
{
    if (!enf_active(ET_RENAME))
        return 0;
    struct enf_req r = {.et = ET_RENAME, .sc = sc, .src = SRC_STR, .flags = flags, .str = oldname, .dfd = olddfd,
                        .str2 = newname, .dfd2 = newdfd};
    return enf_submit(ctx, &r);
}

ENF(syscalls, sys_enter_renameat2)
{
    return enf_rename(ctx, ESC_RENAMEAT2, (s32)ARG(ctx, 0), ARG(ctx, 1), (s32)ARG(ctx, 2), ARG(ctx, 3),
                      (u32)ARG(ctx, 4));
}

ENF(syscalls, sys_enter_renameat)
{
    return enf_rename(ctx, ESC_RENAMEAT, (s32)ARG(ctx, 0), ARG(ctx, 1), (s32)ARG(ctx, 2), ARG(ctx, 3), 0);
}

ENF(syscalls, sys_enter_rename)
{
    return enf_rename(ctx, ESC_RENAME, AT_FDCWD_, ARG(ctx, 0), AT_FDCWD_, ARG(ctx, 1), 0);
}

/* ------------------------------------------------------------------------------------------ chmod */
ENF(syscalls, sys_enter_fchmodat)
{
    return enf_str(ctx, ET_CHMOD, ESC_FCHMODAT, (s32)ARG(ctx, 0), ARG(ctx, 1), 0, (u32)ARG(ctx, 2), 0, 0);
}

ENF(syscalls, sys_enter_fchmodat2)
{
    return enf_str(ctx, ET_CHMOD, ESC_FCHMODAT2, (s32)ARG(ctx, 0), ARG(ctx, 1), (u32)ARG(ctx, 3), (u32)ARG(ctx, 2),
                   0, 0);
}

ENF(syscalls, sys_enter_chmod)
{
    return enf_str(ctx, ET_CHMOD, ESC_CHMOD, AT_FDCWD_, ARG(ctx, 0), 0, (u32)ARG(ctx, 1), 0, 0);
}

ENF(syscalls, sys_enter_fchmod)
{
    return enf_fd(ctx, ET_CHMOD, ESC_FCHMOD, (s32)ARG(ctx, 0), 0, (u32)ARG(ctx, 1), 0, 0);
}

/* ------------------------------------------------------------------------------------------ chown */
ENF(syscalls, sys_enter_fchownat)
{
    return enf_str(ctx, ET_CHOWN, ESC_FCHOWNAT, (s32)ARG(ctx, 0), ARG(ctx, 1), (u32)ARG(ctx, 4), 0,
                   OWNER(ARG(ctx, 2)), OWNER(ARG(ctx, 3)));
}

ENF(syscalls, sys_enter_chown)
{
    return enf_str(ctx, ET_CHOWN, ESC_CHOWN, AT_FDCWD_, ARG(ctx, 0), 0, 0, OWNER(ARG(ctx, 1)), OWNER(ARG(ctx, 2)));
}

ENF(syscalls, sys_enter_lchown)
{
    return enf_str(ctx, ET_CHOWN, ESC_LCHOWN, AT_FDCWD_, ARG(ctx, 0), 0x100, 0, OWNER(ARG(ctx, 1)),
                   OWNER(ARG(ctx, 2)));
}

ENF(syscalls, sys_enter_fchown)
{
    return enf_fd(ctx, ET_CHOWN, ESC_FCHOWN, (s32)ARG(ctx, 0), 0, 0, OWNER(ARG(ctx, 1)), OWNER(ARG(ctx, 2)));
}

/* ------------------------------------------------------------------------------------ open, create */
/* Decided at sys_exit from the new fd (true path; FMODE_CREATED tells a create). The arguments are
 * saved here at sys_enter (this sensor's own map: the file sensor's entry is gone by then). */
static __always_inline int enf_open_enter(u64 flags, u64 mode)
{
    if (!enf_active(ET_OPEN) && !enf_active(ET_CREATE))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct enf_open o = {.flags = flags, .mode = mode};
    enf_open_inflight.update(&tid, &o);
    return 0;
}

ENF(syscalls, sys_enter_openat) { return enf_open_enter((u32)ARG(ctx, 2), (u32)ARG(ctx, 3)); }
ENF(syscalls, sys_enter_open) { return enf_open_enter((u32)ARG(ctx, 1), (u32)ARG(ctx, 2)); }
ENF(syscalls, sys_enter_creat) { return enf_open_enter(01 | 0100 | 01000, (u32)ARG(ctx, 1)); }

ENF(syscalls, sys_enter_openat2)
{
    u64 how[2] = {};
    if (!enf_active(ET_OPEN) && !enf_active(ET_CREATE))
        return 0;
    bpf_probe_read_user(how, sizeof(how), (void *)ARG(ctx, 2));
    return enf_open_enter(how[0], how[1]);
}

static __always_inline int enf_open_exit(void *ctx, u32 sc)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct enf_open *o = enf_open_inflight.lookup(&tid);
    if (!o)
        return 0;
    struct enf_req r = {.et = ET_OPEN, .sc = sc, .src = SRC_OPEN_EXIT, .flags = o->flags, .mode = o->mode};
    enf_open_inflight.delete(&tid);
    r.fd = (s64)ARG(ctx, 0);
    if (r.fd < 0)
        return 0;
    return enf_submit(ctx, &r);
}

ENF(syscalls, sys_exit_openat) { return enf_open_exit(ctx, ESC_OPENAT); }
ENF(syscalls, sys_exit_open) { return enf_open_exit(ctx, ESC_OPEN); }
ENF(syscalls, sys_exit_creat) { return enf_open_exit(ctx, ESC_CREAT); }
ENF(syscalls, sys_exit_openat2) { return enf_open_exit(ctx, ESC_OPENAT2); }

/* ------------------------------------------------------------------------------------------- exec */
/* After the point of no return: the new image is in place (mm->exe_file, creds, comm) and SIGKILL is
 * delivered before it runs one instruction. */
ENF(sched, sched_process_exec)
{
    if (!enf_active(ET_EXEC))
        return 0;
    struct enf_req r = {.et = ET_EXEC, .src = SRC_EXE};
    return enf_submit(ctx, &r);
}
