/* In-kernel filtering driven by the rules: the maps userspace fills from RuleSet.kernel_policy()
 * (services/collector/policy.py) and the lookups the file sensor makes before it builds a record.
 * Pasted right after fimstream.h, so every sensor can use it.
 *
 * Cheapest test first (issue 3):
 *   1. the event type's mode: drop / pass / filter                      (array lookup)
 *   2. type-wide approvers: flags & mask, mode & mask                    (in the type's entry)
 *   3. inode approver (dev, ino) of the file                             (hash)
 *   4. basename approver                                                 (LPM trie, exact entries)
 *   5. parent-directory discarder                                        (LRU hash, epoch, verified entry)
 *   6. path walk, then exact-path and prefix approvers                   (LPM trie)
 * An event no approver accepts is counted `filtered`; one a discarder drops is counted `discarded`.
 *
 * Atomic updates: every policy entry carries a generation bit (first byte of LPM keys, a field of hash
 * keys, the upper half of the type array). Userspace writes the inactive generation, then flips `gen`
 * (one array element), then bumps the policy epoch; a program reads the epoch first and the generation
 * second, so an event is judged by one whole policy and what it learns is tagged with an epoch that is
 * already stale if the policy changed under it.
 *
 * Discarders (direct children of one directory): keyed by the parent dentry, the vfsmount it was
 * reached through and the task's root (so a chroot or a bind mount is another key), checked against the
 * parent's inode pointer, own parent and name, and its inode's i_ino and i_generation (a dentry freed and
 * reused for another directory, even with the same name length in the same place and the same inode
 * memory, does not match: its new inode has another generation), and valid for one epoch: the kernel bumps
 * it on rename (syscall or io_uring), mount, umount, move_mount; userspace on every policy change. An
 * unlink or rmdir (syscall or io_uring) bumps a removal epoch instead, which only ends entries whose inode
 * could come back with the same number and generation (generation 0 on a filesystem that gives new inodes
 * none: ramfs, overlayfs; see gen_stable): a build that removes its temporary files and directories no
 * longer sends every directory back to a walk.
 * Bits per event type: `u` learned by userspace (RuleSet.can_discard: no rule can match anything under
 * the directory), `r` and `f` learned here after a walk (no path/prefix approver can accept a child of
 * the directory: `r` for events whose flags leave only the "any flags" approvers, `f` for all events).
 * File entries: where some approver may take a child of the directory (/etc), a walked file no approver
 * took is remembered itself, keyed by its own dentry | DK_FILE and checked the same way (its inode, parent,
 * name, i_ino, i_generation), so the loader's ld.so.cache open of every exec stops walking.
 *
 * Path-string events (failed opens, unlink, rename, chmod by path...) have no dentry: they are judged on
 * their lexical path (true base directory + the caller's string). That is exact unless the string goes
 * through "." / ".." / "//" (checked here) or through a symbolic link: the `hazards` trie holds, per mount
 * namespace, the lexical paths of symlinks (a start-up scan of the filesystem, every symlink created since,
 * renamed or linked copies of them, and every new mount point); a path under one of them, or of a process
 * outside a scanned namespace or whose root is not that namespace's scanned root, is passed with HF_UNSURE and userspace judges it after resolving
 * the path (KernelPolicy.passes).
 *
 * Lexical discarders (path strings; a build's failed opens of include and library search paths are most of
 * them): a clean string judged lexically and filtered teaches the kernel its directory, as written, when no
 * path or prefix approver may accept any child of it (its "dir/\x01" marker) and no hazard lies at, above or
 * below it. Later strings naming a child of that directory are dropped after the name approvers are asked,
 * without the two trie lookups (~1 us here). Keyed by the directory's bytes, mount namespace, type and slot;
 * valid for one policy epoch and one hazard epoch (the kernel bumps it after each hazard it records).
 */
#ifndef FIMSTREAM_FILTER_H
#define FIMSTREAM_FILTER_H

#define MODE_PASS 0               /* no policy loaded, or a rule needs every event of the type */
#define MODE_DROP 1
#define MODE_FILTER 2
#define ANY_FLAGS (1ULL << 63)    /* an approver that accepts any flags */
#define SLOT_FILE 0
#define SLOT_TARGET 1
#define HAS_INODE_F 1             /* which lookups can hit for a type (skip the others) */
#define HAS_INODE_T 2
#define HAS_NAME_F 4
#define HAS_NAME_T 8
#define HAS_PATH_F 16
#define HAS_PATH_T 32
#define HAS_EXE 64                /* exe approvers: judged in userspace (HF_UNSURE) */
#define HAS_LEARN 128             /* keep discarder candidates for userspace */
#define HF_UNSURE 1               /* rec_hdr.hflags: passed without an approver's word */
#define HF_APPROVED 2
#define V_CONTINUE 0
#define V_PASS 1
#define V_APPROVED 2
#define V_UNSURE 3
#define V_FILTERED 4
#define V_DISCARDED 5
#define LPM_DATA 256              /* the kernel's LPM_DATA_SIZE_MAX */
#define FMODE_CREATED_ 0x100000
#define FMODE_WRITE_ 0x2
#define PS_GEN 0                  /* pstate slots: userspace writes 0, 1 and 4; the kernel 2 and 3 */
#define PS_PEPOCH 1
#define PS_KEPOCH 2
#define PS_HAZARDS_FULL 3
#define PS_ON 4                   /* a policy is loaded */
#define PS_HEPOCH 5               /* bumped by the kernel after each hazard it records */
#define PS_REPOCH 6               /* bumped by the kernel after each unlink and rmdir (see entry_current) */

struct fpol {                     /* one event type (record kind) of one generation */
    u8 mode;
    u8 has;
    u16 pad;
    u32 pad2;
    u64 flags;                    /* type-wide approver: flags & this */
    u64 mode_bits;                /* type-wide approver: mode & this */
    u64 masked;                   /* union of the entries' flag masks: flags & masked == 0 leaves only "any" */
    u64 nlen[8];                  /* lengths of the name approvers, a 256-bit set per slot: a name of */
                                  /* another length skips the name lookup (a string read and a trie walk) */
    u64 ibloom[16];               /* the inode approvers' (dev, ino), 1024 bits (inode_bit): a file whose */
                                  /* bit is clear skips the hash lookup (~40 ns here) */
    u64 nfirst[8];                /* first bytes of the name approvers, a 256-bit set per slot (with nlen, */
};                                /* most names skip the trie lookup: "stdio.h" has the length of "id_rsa") */

struct lpm_key {
    u32 prefixlen;
    u8 data[LPM_DATA];
};

struct lpm_buf {                  /* an lpm_key with slack, so masked indexes stay inside for the verifier */
    u32 prefixlen;
    u8 data[LPM_DATA + 8];
};

struct lpm_val {                  /* masks: 0 none, ANY_FLAGS any flags, else some of these flags */
    u64 pmask;                    /* merged masks of every prefix entry that is a prefix of this key */
    u64 emask;                    /* exact path (key ends with its NUL) */
    u64 amask;                    /* marker "dir/\x01": some path or prefix entry is a direct child of dir */
};

struct ikey {
    u64 ino;
    u32 dev;                      /* kernel dev_t, as sb->s_dev */
    u8 gen, kind, slot, pad;
};

struct dkey {
    u64 dentry;                   /* the parent directory */
    u64 mnt;                      /* the vfsmount it was reached through */
    u64 root_dentry;              /* the task's root */
    u64 root_mnt;
};

struct dval {
    u64 epoch;
    u64 inode;                    /* checks: the entry still describes this dentry */
    u64 parent;
    u64 name;
    u64 len;
    u64 ino;                      /* and its inode is still the same one (i_sb, i_ino, i_generation) */
    u64 sb;
    u32 igen;
    u32 stable;                   /* a new inode of this filesystem never has this (ino, generation) */
    u64 repoch;                   /* removals seen when learned: only checked where not stable */
    u64 ubits;                    /* per record kind: userspace-learned (rules) */
    u64 rbits;                    /* kernel-learned, events with no masked flags */
    u64 fbits;                    /* kernel-learned, every event */
};

struct ckey {
    u64 ktime;                    /* the emitted record's header: ktime + tid identify it */
    u32 tid;
    u32 pad;
};

struct cand {
    struct dkey dk;
    struct dval dv;
};

#define LEX_DIR 120               /* longer directories get no lexical discarder: the key is hashed whole */
struct lexkey {                   /* a lexical discarder: a directory, as a path string names it */
    u32 ns;                       /* mount namespace */
    u8 kind, slot;
    u16 pad;
    u8 dir[LEX_DIR];              /* without its trailing "/", zero-padded */
};

struct lexval {
    u64 epoch;                    /* policy epoch << 40 + hazard epoch */
    u64 any_flags;                /* 1: every event; 0: events whose flags leave only "any flags" approvers */
};

struct fstate {                   /* per-CPU working state of one event's filtering */
    struct lpm_buf k;
    struct lpm_buf h;
    struct dkey dk;
    struct dval dv;
    struct file_info fi;          /* the fd-based file's identity */
    u64 p_inode, p_parent, p_name, p_len;   /* the keyed dentry (parent, or file): parent_window() */
    u64 p_ino, p_sb;
    u32 p_igen, pad4;
    u64 dentry, mnt, parent, name;
    u64 root_mnt, root_dentry, pwd_mnt, pwd_dentry;
    u64 epoch;
    u64 lepoch;                   /* what lexical verdicts depend on: policy and hazards */
    u64 repoch;                   /* removals (unlink, rmdir) so far */
    u32 gen, name_len, fmode, deleted;
    u32 walked, wflags, fs_read, lexical;   /* lexical: 0 unknown, 1 yes, 2 no */
    u32 rhint, pad5;              /* the parent's entry holds for this event if its flags are unflagged */
    u32 key_end, last_slash, ns, pad;
    u32 v, kind;                  /* spilled through map memory: see forget() */
    u32 via_fd, pad3;             /* a path string that named one of the caller's fds (/proc/self/fd/N) */
    u64 lw, ls;                   /* dirty(): the last word with a "/", and its marks */
    s64 r;                        /* launder() */
    struct lexkey lk;             /* not last: a bounded copy into lk.dir may run past it, inside fstate */
    struct inflight in;           /* the syscall's arguments, for a tail call */
};

BPF_ARRAY(pstate, u64, 8);
BPF_ARRAY(fpolicy, struct fpol, 2 * NKINDS);
BPF_HASH(pol_inodes, struct ikey, u64, POL_INODES_MAX);
BPF_LPM_TRIE(pol_paths, struct lpm_key, struct lpm_val, POL_PATHS_MAX);
BPF_LPM_TRIE(pol_names, struct lpm_key, u64, POL_NAMES_MAX);
BPF_LPM_TRIE(hazards, struct lpm_key, u64, HAZARDS_MAX);       /* [mnt ns u32] + path + "/" */
BPF_LPM_TRIE(hazard_dirs, struct lpm_key, u64, HAZARDS_MAX);   /* [mnt ns u32] + ancestor + "\0" */
struct lexroot {                  /* a scanned mount namespace: the root its lexical paths are relative to */
    u64 ino;
    u32 dev;
    u32 pad;
};
BPF_HASH(lexical_ns, u32, struct lexroot, 1024);              /* mount namespaces whose symlinks are known */
BPF_TABLE("lru_hash", struct dkey, struct dval, discarders, DISCARDERS_MAX);
struct dhit {                     /* a discarder that dropped an event, kept per CPU (see discarded()) */
    struct dkey dk;
    struct dval dv;
};
#define DHITS 256
BPF_PERCPU_ARRAY(dhits, struct dhit, DHITS);
BPF_TABLE("lru_hash", struct ckey, struct cand, dcand, CANDIDATES_MAX);
BPF_TABLE("lru_hash", struct lexkey, struct lexval, lex_discarders, LEX_DISCARDERS_MAX);
BPF_TABLE("lru_hash", u64, u64, written, WRITTEN_MAX);         /* struct file * -> policy generation + 1 */
BPF_PERCPU_ARRAY(fstate_map, struct fstate, 1);

static __always_inline u64 ps_get(u32 i)
{
    u64 *v = pstate.lookup(&i);
    return v ? *v : 0;
}

static __always_inline struct fstate *fstate_get(void)
{
    u32 zero = 0;
    return fstate_map.lookup(&zero);
}

/* A value through map memory: the verifier forgets it, so the paths that computed it converge. */
static __always_inline s64 launder(struct fstate *f, s64 x)
{
    *(volatile s64 *)&f->r = x;
    return *(volatile s64 *)&f->r;
}

/* Start judging one event: the epoch first, then the generation (see the header comment). */
static __always_inline void filter_begin(struct fstate *f)
{
    u64 pepoch = ps_get(PS_PEPOCH);
    u64 gen = ps_get(PS_GEN);
    f->epoch = (pepoch << 40) + ps_get(PS_KEPOCH);
    f->lepoch = (pepoch << 40) + ps_get(PS_HEPOCH);
    f->repoch = ps_get(PS_REPOCH);
    f->gen = gen & 1;
    f->walked = 0;
    f->fs_read = 0;
    f->lexical = 0;
    f->rhint = 0;
    f->via_fd = 0;
    f->dentry = 0;
    f->dk.dentry = 0;
}

static __always_inline struct fpol *policy_of(struct fstate *f, u32 kind)
{
    u32 idx = f->gen * NKINDS + (kind & (NKINDS - 1));
    return fpolicy.lookup(&idx);
}

static __always_inline void ps_bump(u32 i)
{
    u64 *v = pstate.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline void bump_epoch(void)
{
    ps_bump(PS_KEPOCH);
}

static __always_inline int compat(u64 mask, u64 flags)
{
    return (mask & (flags | ANY_FLAGS)) != 0;
}

/* Mode and type-wide approvers: V_PASS, V_FILTERED (drop), V_APPROVED or V_CONTINUE. */
static __always_inline int prefilter(struct fpol *p, u64 flags, u64 mode)
{
    if (!p || p->mode == MODE_PASS)
        return V_PASS;
    if (p->mode == MODE_DROP)
        return V_FILTERED;
    if ((flags & p->flags) || (mode & p->mode_bits))
        return V_APPROVED;
    return V_CONTINUE;
}

/* ------------------------------------------------------------------------------- task and files */
static __always_inline u64 fd_file_of(u64 task, s64 fd)
{
    if (fd < 0)
        return 0;
    DWIN_BUF(fdt, W_FDT);
    DREAD_WIN(fdt, W_FDT, KRD64(W_FILES, KRD64(W_TASK, task, O_TASK_FILES), O_FILES_FDT));
    if ((u64)fd >= DWIN32(fdt, W_FDT, O_FDT_MAX_FDS))
        return 0;
    return KRDV64(DWIN64(fdt, W_FDT, O_FDT_FD) + (u64)fd * 8);
}

static __always_inline void fs_read(struct fstate *f, u64 task)
{
    if (f->fs_read)
        return;
    DWIN_BUF(w, W_FS);
    DREAD_WIN(w, W_FS, KRD64(W_TASK, task, O_TASK_FS));
    f->root_mnt = DWIN64(w, W_FS, O_FS_ROOT + O_PATH_MNT);
    f->root_dentry = DWIN64(w, W_FS, O_FS_ROOT + O_PATH_DENTRY);
    f->pwd_mnt = DWIN64(w, W_FS, O_FS_PWD + O_PATH_MNT);
    f->pwd_dentry = DWIN64(w, W_FS, O_FS_PWD + O_PATH_DENTRY);
    f->fs_read = 1;
}

/* What the filter and the record need from a struct file: file, dentry and inode windows, read once. */
static __always_inline int file_read(struct fstate *f, u64 file)
{
    __builtin_memset(&f->fi, 0, sizeof(f->fi));
    f->dentry = 0;
    if (!file)
        return 0;
    DWIN_BUF(w, W_FILE);
    DREAD_WIN(w, W_FILE, file);
    f->dentry = DWIN64(w, W_FILE, O_FILE_PATH_DENTRY);
    f->mnt = DWIN64(w, W_FILE, O_FILE_PATH_MNT);
    f->fmode = DWIN32(w, W_FILE, O_FILE_MODE);
    DWIN_BUF(d, W_DENTRY);
    DREAD_WIN(d, W_DENTRY, f->dentry);
    f->parent = DWIN64(d, W_DENTRY, O_DENTRY_PARENT);
    f->name = DWIN64(d, W_DENTRY, O_DENTRY_NAME_NAME);
    f->name_len = DWIN32(d, W_DENTRY, O_DENTRY_NAME_LEN);
    f->deleted = !DWIN64(d, W_DENTRY, O_DENTRY_HASH_PPREV) && f->parent != f->dentry;
    fill_inode(&f->fi, DWIN64(d, W_DENTRY, O_DENTRY_INODE));
    return 1;
}

/* The file's path into s->path[s->pos .. PATH_END): the walk, or for a file with no place in any tree
 * (memfd_create and other pseudo files: the dentry is its own parent, not a mount root) what d_path shows,
 * "/" + its name. Sets f->walked, f->wflags. */
static __always_inline void walk_file(struct scratch *s, struct fstate *f)
{
    f->walked = 1;
    if (f->parent == f->dentry && KRD64(W_VFSMOUNT, f->mnt, O_VFSMOUNT_ROOT) != f->dentry) {
        u32 n = f->name_len;
        if (n > NAME_MAX_)
            n = NAME_MAX_;
        u32 pos = PATH_END - n - 1;
        opaque(pos);
        s->path[pos & PATH_MASK] = '/';
        bpf_probe_read_kernel(&s->path[(pos + 1) & PATH_MASK], n & NAME_MAX_, (void *)f->name);
        s->pos = pos;
        f->wflags = PF_OUTSIDE_ROOT;
        if (!f->fi.nlink)
            f->deleted = 1;
        return;
    }
    f->wflags = walk_to(s, f->dentry, f->mnt, f->root_mnt, f->root_dentry);
}

/* The record's slot for the file file_read() read: its walked path (walked now unless the filter did). */
static __always_inline void slot_from_state(struct scratch *s, struct fstate *f, struct file_info *fi, u64 task)
{
    __builtin_memcpy(fi, &f->fi, sizeof(*fi));
    if (!f->dentry) {
        fi->path_flags = PF_UNRESOLVED;
        return;
    }
    if (!f->walked) {
        fs_read(f, task);
        walk_file(s, f);
    }
    fi->path_flags = f->wflags | (f->deleted ? PF_DELETED : 0);
    fi->path_len = append_walk(s);
}

/* --------------------------------------------------------------------------------------- lookups */
/* Is `bit` set in a bit set of (words_mask + 1) u64 words (a policy entry's nlen, ibloom)? */
static __always_inline int bit_set(u64 *words, u32 words_mask, u32 bit)
{
    u32 word = bit >> 6;
    opaque(word);                                     /* keep the mask on the register that indexes */
    return (words[word & words_mask] >> (bit & 63)) & 1;
}

/* (dev, ino) -> one of 1024 bits (policy.inode_bit computes the same). */
static __always_inline u32 inode_bit(u64 ino, u32 dev)
{
    return ((ino ^ ((u64)dev << 32)) * 0x9E3779B97F4A7C15ULL) >> 54;
}

/* May an inode approver of this type name (dev, ino)? (1024-bit filter: no means no) */
static __always_inline int inode_maybe(struct fpol *p, u64 ino, u32 dev)
{
    return bit_set(p->ibloom, 15, inode_bit(ino, dev));
}

static __always_inline int inode_ok(struct fstate *f, struct fpol *p, u32 kind, u32 slot, u64 ino, u32 dev, u64 flags)
{
    if (!inode_maybe(p, ino, dev))
        return 0;
    struct ikey k = {.ino = ino, .dev = dev, .gen = f->gen, .kind = kind, .slot = slot};
    u64 *m = pol_inodes.lookup(&k);
    return m && compat(*m, flags);
}

static __always_inline void key_head(struct lpm_buf *k, struct fstate *f, u32 kind, u32 slot)
{
    k->data[0] = f->gen;
    k->data[1] = kind;
    k->data[2] = slot;
}

/* Can a name approver of this length exist? (Exact entries only, so a length no approver has cannot match;
 * the key keeps at most LPM_DATA - 4 bytes of a name.) */
static __always_inline int name_len_ok(struct fpol *p, u32 slot, u32 len)
{
    if (len > LPM_DATA - 4)
        len = LPM_DATA - 4;
    return bit_set(p->nlen, 7, slot * 256 + len);
}

static __always_inline int name_first_ok(struct fpol *p, u32 slot, u8 c)
{
    return bit_set(p->nfirst, 7, slot * 256 + c);
}

/* A name approver on a kernel name (d_name): 1 approved, 0 not. */
static __always_inline int kname_ok(struct fstate *f, struct fpol *p, u32 kind, u32 slot, u64 name, u64 flags)
{
    key_head(&f->h, f, kind, slot);
    long n = bpf_probe_read_kernel_str(&f->h.data[3], LPM_DATA - 3, (void *)name);
    if (n <= 0 || !name_first_ok(p, slot, f->h.data[3]))
        return 0;
    f->h.prefixlen = (3 + (n & 255)) * 8;             /* with its NUL: exact entries only */
    u64 *m = pol_names.lookup((struct lpm_key *)&f->h);
    return m && compat(*m, flags);
}

/* f->k = [gen, kind, slot] + s->path[pos..end) + term (when it fits). Returns 1 when the whole path fit. */
static __always_inline int key_walked(struct fstate *f, u32 kind, u32 slot, struct scratch *s, u32 pos, u32 end,
                                      u8 term)
{
    key_head(&f->k, f, kind, slot);
    if (pos > end || end > PATH_END)
        return 0;
    u32 n = end - pos;
    int whole = 1;
    if (n > LPM_DATA - 4) {
        n = LPM_DATA - 4;
        whole = 0;
    }
    opaque(n);
    n &= 255;
    bpf_probe_read_kernel(&f->k.data[3], n, &s->path[pos & PATH_MASK]);
    u32 len = 3 + n;
    if (whole) {
        f->k.data[len & 255] = term;
        len++;
    }
    f->k.prefixlen = len * 8;
    return whole;
}

/* ------------------------------------------------------------------------------------ discarders */
#define DK_FILE 1ULL              /* dkey.dentry | DK_FILE: a file entry (dentries are 8-aligned) */

/* What the entry of f->dk is checked against: the keyed dentry and its inode. A negative dentry has no
 * inode: the reads of address 0 give 0 (direct loads and probe reads are fault-safe). */
static __always_inline void parent_window(struct fstate *f)
{
    DWIN_BUF(w, W_DENTRY);
    DREAD_WIN(w, W_DENTRY, f->dk.dentry & ~DK_FILE);
    f->p_inode = DWIN64(w, W_DENTRY, O_DENTRY_INODE);
    f->p_parent = DWIN64(w, W_DENTRY, O_DENTRY_PARENT);
    f->p_name = DWIN64(w, W_DENTRY, O_DENTRY_NAME_NAME);
    f->p_len = DWIN32(w, W_DENTRY, O_DENTRY_NAME_LEN);
    f->p_ino = KRD64(W_INODE, f->p_inode, O_INODE_INO);
    f->p_igen = KRD32(W_INODE, f->p_inode, O_INODE_GENERATION);
    f->p_sb = KRD64(W_INODE, f->p_inode, O_INODE_SB);
}

/* Filesystems whose new inodes always get a generation number (random, or counted from a random start),
 * so an inode of generation 0 (made by mkfs -d or an image builder, as on this host's root) cannot come
 * back as another: ext2/3/4, xfs, btrfs, tmpfs. Elsewhere (ramfs, overlayfs...) an entry of generation 0
 * ends at the next removal. */
static __always_inline u32 gen_stable(u64 sb, u32 igen)
{
    if (igen)
        return 1;
    u64 magic = KRD64(W_SB, sb, O_SB_MAGIC);
    return magic == 0xEF53 || magic == 0x58465342 || magic == 0x9123683E || magic == 0x01021994;
}

static __always_inline int entry_current(struct fstate *f, struct dval *v)
{
    return v->epoch == f->epoch && v->inode == f->p_inode && v->parent == f->p_parent && v->name == f->p_name
        && v->len == f->p_len && v->ino == f->p_ino && v->igen == f->p_igen && v->sb == f->p_sb
        && (v->stable || v->repoch == f->repoch);
}

static __always_inline void dkey_fill(struct fstate *f)
{
    f->dk.dentry = f->parent;
    f->dk.mnt = f->mnt;
    f->dk.root_dentry = f->root_dentry;
    f->dk.root_mnt = f->root_mnt;
}

/* Does entry v drop this event? restricted: 1 the event's flags leave only "any" approvers, 0 not, 2 a
 * pass-mode type (rules only). */
static __always_inline int drops(struct fstate *f, struct dval *v, u32 kind, int restricted)
{
    u64 kbits = restricted == 2 ? 0 : (restricted ? v->rbits : v->fbits);
    return v->epoch == f->epoch && ((v->ubits | kbits) >> (kind & 63)) & 1;
}

static __always_inline int dkey_eq(struct dkey *a, struct dkey *b)
{
    return a->dentry == b->dentry && a->mnt == b->mnt && a->root_dentry == b->root_dentry && a->root_mnt == b->root_mnt;
}

/* The discarder of f->dk, checked against the parent's dentry. The last entry that dropped an event is
 * kept per CPU in a slot chosen by the parent dentry (dhits: an inlined array lookup, where the LRU hash
 * costs ~60-100 ns here with its 32-byte key). Only drops are kept and an entry only gains bits within its
 * epoch, so a kept copy is never wrong, at most behind: a miss there falls back to the LRU map. */
static __always_inline int discarded(struct fstate *f, u32 kind, int restricted)
{
    u32 slot = ((f->dk.dentry >> 6) * 0x9E3779B97F4A7C15ULL) >> 56;
    struct dhit *h = dhits.lookup(&slot);
    if (h && dkey_eq(&h->dk, &f->dk)) {
        if (drops(f, &h->dv, kind, restricted)) {
            parent_window(f);
            if (entry_current(f, &h->dv))
                return 1;
        } else if (restricted == 0 && drops(f, &h->dv, kind, 1)) {
            parent_window(f);                         /* it holds for unflagged events: the flags decide */
            f->rhint = entry_current(f, &h->dv);      /* (fd_lookups, once they are read), no LRU lookup */
            if (f->rhint)
                return 0;
        }
    }
    struct dval *v = discarders.lookup(&f->dk);
    if (!v || !drops(f, v, kind, restricted))
        return 0;
    parent_window(f);
    if (!entry_current(f, v))
        return 0;
    if (h) {
        __builtin_memcpy(&h->dk, &f->dk, sizeof(h->dk));
        __builtin_memcpy(&h->dv, v, sizeof(h->dv));
    }
    return 1;
}

static __always_inline void dval_fill(struct fstate *f, struct dval *v)
{
    v->epoch = f->epoch;
    v->inode = f->p_inode;
    v->parent = f->p_parent;
    v->name = f->p_name;
    v->len = f->p_len;
    v->ino = f->p_ino;
    v->sb = f->p_sb;
    v->igen = f->p_igen;
    v->stable = gen_stable(f->p_sb, f->p_igen);
    v->repoch = f->repoch;
}

/* Remember f->dk with these bits; not when a removal happened since the event began (the walk may have
 * judged a directory that is gone, and whose dentry and inode now describe another one). */
static __always_inline void discarder_learn(struct fstate *f, u64 rbits, u64 fbits)
{
    if (ps_get(PS_REPOCH) != f->repoch)
        return;
    parent_window(f);
    struct dval *v = discarders.lookup(&f->dk);
    if (v && entry_current(f, v)) {                   /* racing writers can only lose bits: conservative */
        v->rbits |= rbits;
        v->fbits |= fbits;
        return;
    }
    dval_fill(f, &f->dv);
    f->dv.ubits = 0;
    f->dv.rbits = rbits;
    f->dv.fbits = fbits;
    discarders.update(&f->dk, &f->dv);
}

/* After a walk found no approver: may any path or prefix approver accept a direct child of the
 * file's directory? If not, remember it. Not for a mount's root (its parent dentry is not its directory).
 * Returns what was learned: 0 nothing, 1 for unflagged events (r), 2 for all (f). */
static __always_inline int learn_walked(struct scratch *s, struct fstate *f, u32 kind)
{
    u32 pos = s->pos;
    u32 end = PATH_END - f->name_len;
    if (f->wflags || f->name_len == 0 || end <= pos || end > PATH_END)
        return 0;
    if (KRD64(W_VFSMOUNT, f->mnt, O_VFSMOUNT_ROOT) == f->dentry)
        return 0;
    if (!key_walked(f, kind, SLOT_FILE, s, pos, end, 1))   /* "dir/\x01": the directory's marker */
        return 0;
    struct lpm_val *v = pol_paths.lookup((struct lpm_key *)&f->k);
    u64 m = v ? (v->pmask | v->amask) : 0;
    if (m & ANY_FLAGS)
        return 0;
    u64 bit = 1ULL << (kind & 63);
    discarder_learn(f, bit, m ? 0 : bit);
    return m ? 1 : 2;
}

/* After a walk found no approver for the file itself (m: the masks its path matched, none compatible): when
 * its directory could not be learned (some approver may take another child), remember the file. Its own
 * dentry | DK_FILE is the key, so a file entry never answers for the directory's children. */
static __always_inline void file_learn(struct fstate *f, u32 kind, u64 m)
{
    if (f->wflags || f->deleted || !f->dentry)
        return;
    u64 bit = 1ULL << (kind & 63);
    f->dk.dentry = f->dentry | DK_FILE;
    discarder_learn(f, bit, m ? 0 : bit);
    f->dk.dentry = f->parent;
}

/* An emitted fd-based event: keep its directory's key for userspace, which may learn a rule discarder. */
static __always_inline void candidate(struct fstate *f, struct rec_hdr *h)
{
    if (!f->dentry || !f->fs_read || f->wflags || f->name_len == 0)
        return;
    if (KRD64(W_VFSMOUNT, f->mnt, O_VFSMOUNT_ROOT) == f->dentry || ps_get(PS_REPOCH) != f->repoch)
        return;                                       /* a mount's root; a removal since the event began */
    dkey_fill(f);
    parent_window(f);
    struct ckey ck = {.ktime = h->ktime, .tid = h->tid};
    struct cand c = {};
    c.dk = f->dk;
    dval_fill(f, &c.dv);
    dcand.update(&ck, &c);
}

/* ------------------------------------------------------------------------------ fd-based verdict */
/* A pass-mode type: only the rules' discarders can drop its fd-based events. */
static __always_inline int pass_verdict(struct fstate *f, struct fpol *p, u32 kind, u64 task)
{
    if (!p || !(p->has & HAS_LEARN) || !f->dentry)
        return V_PASS;
    fs_read(f, task);
    dkey_fill(f);
    return discarded(f, kind, 2) ? V_DISCARDED : V_PASS;
}

/* The lookups before an fd-based event's path walk, cheapest first: V_APPROVED, V_UNSURE, V_FILTERED,
 * V_DISCARDED, or V_CONTINUE (walk). known == 0: the syscall's flags have not been read yet (fd_quick), and
 * anything they could change (an inode or name approver that may exist, an exe approver, a discarder entry
 * that holds for unflagged events only) returns V_CONTINUE instead. */
static __always_inline int fd_lookups(struct fstate *f, struct fpol *p, u32 kind, u64 flags, int known, u64 task)
{
    if ((p->has & HAS_INODE_F) && inode_maybe(p, f->fi.ino, f->fi.dev)) {
        if (!known)
            return V_CONTINUE;
        if (inode_ok(f, p, kind, SLOT_FILE, f->fi.ino, f->fi.dev, flags))
            return V_APPROVED;
    }
    if ((p->has & HAS_NAME_F) && name_len_ok(p, SLOT_FILE, f->name_len)
        && name_first_ok(p, SLOT_FILE, (u8)KRDV64(f->name))) {   /* a name approver may take it */
        if (!known)
            return V_CONTINUE;
        if (kname_ok(f, p, kind, SLOT_FILE, f->name, flags))
            return V_APPROVED;
    }
    if (p->has & HAS_EXE)
        return known ? V_UNSURE : V_CONTINUE;
    if (!(p->has & HAS_PATH_F))
        return V_FILTERED;
    fs_read(f, task);
    dkey_fill(f);
    int restricted = known && (flags & p->masked) == 0;
    if ((restricted && f->rhint) || discarded(f, kind, restricted))
        return V_DISCARDED;
    if (!known)                                       /* most opens missed here only for want of their flags */
        return V_CONTINUE;                            /* (an `r` entry): not worth a second miss */
    f->dk.dentry = f->dentry | DK_FILE;              /* the file's own entry (file_learn) */
    int hit = discarded(f, kind, restricted);
    f->dk.dentry = f->parent;
    return hit ? V_DISCARDED : V_CONTINUE;
}

/* What an fd-based event's file alone settles, before the syscall's flags are read (reading them costs
 * ~50-70 ns): V_FILTERED, V_DISCARDED, or V_CONTINUE for prefilter() and fd_verdict(). */
static __always_inline int fd_quick(struct fstate *f, struct fpol *p, u32 kind, u64 task)
{
    if (!p || p->mode == MODE_PASS)
        return V_CONTINUE;
    if (p->mode == MODE_DROP)
        return V_FILTERED;
    if (p->flags || p->mode_bits)                     /* a type-wide approver looks at the flags */
        return V_CONTINUE;
    return fd_lookups(f, p, kind, 0, 0, task);
}

static __always_inline int fd_verdict(struct scratch *s, struct fstate *f, struct fpol *p, u32 kind, u64 flags,
                                      u64 task)
{
    int r = fd_lookups(f, p, kind, flags, 1, task);
    if (r != V_CONTINUE)
        return r;
    walk_file(s, f);
    if (f->wflags & (PF_TRUNCATED | PF_DEPTH))
        return V_UNSURE;                              /* only the deepest part of the path is known */
    key_walked(f, kind, SLOT_FILE, s, s->pos, PATH_END, 0);
    struct lpm_val *v = pol_paths.lookup((struct lpm_key *)&f->k);
    if (v && (compat(v->pmask, flags) || compat(v->emask, flags)))
        return V_APPROVED;
    u64 m = v ? (v->pmask | v->emask) : 0;
    int learned = learn_walked(s, f, kind);
    if (learned == 0 || (learned == 1 && m == 0))    /* the directory's entry does not cover what the file's would */
        file_learn(f, kind, m);
    return V_FILTERED;
}

/* --------------------------------------------------------------------------- path-string verdict */
/* May this process's path strings be judged lexically? Its mount namespace was scanned for symlinks
 * and its root is that namespace's root (not chrooted). */
static __always_inline int lexical_ok(struct fstate *f, u64 task)
{
    if (f->lexical)
        return f->lexical == 1;
    f->lexical = 2;
    f->ns = KRD32(W_MNT_NS, KRD64(W_NSPROXY, KRD64(W_TASK, task, O_TASK_NSPROXY), O_NSPROXY_MNT_NS), O_MNT_NS_INUM);
    struct lexroot *want = lexical_ns.lookup(&f->ns);
    if (!want || ps_get(PS_HAZARDS_FULL))
        return 0;
    fs_read(f, task);
    DWIN_BUF(w, W_INODE);                              /* the task's root directory: not chrooted elsewhere */
    DREAD_WIN(w, W_INODE, KRD64(W_DENTRY, f->root_dentry, O_DENTRY_INODE));
    if (DWIN64(w, W_INODE, O_INODE_INO) != want->ino || KRD32(W_SB, DWIN64(w, W_INODE, O_INODE_SB), O_SB_DEV) != want->dev)
        return 0;
    f->lexical = 1;
    return 1;
}

/* f->k = [gen, kind, slot] + lexical path (base walk + "/" + string; the string alone when absolute or
 * raw) + NUL. Sets key_end (index of the NUL) and returns where the string part starts (its leading "/"
 * for a joined path), or -1 when the path cannot be judged (base unknown, too long, empty). */
static __always_inline long read_str(void *dst, u32 size, u64 ptr, int user)
{
    return user ? bpf_probe_read_user_str(dst, size, (void *)ptr) : bpf_probe_read_kernel_str(dst, size, (void *)ptr);
}

/* `user`: uptr is in the caller's memory (a syscall's argument), else a kernel copy (io_uring's names). */
static __always_inline int key_string_(struct scratch *s, struct fstate *f, u32 kind, u32 slot, s64 dfd, u64 uptr,
                                       u64 task, int raw, int user)
{
    __builtin_memset(&f->k, 0, sizeof(f->k));        /* dirty() reads whole words past the NUL */
    key_head(&f->k, f, kind, slot);
    if (!uptr)
        return -1;
    long r = read_str(&f->k.data[3], LPM_DATA - 3, uptr, user);
    if (r <= 1 || r >= LPM_DATA - 3)
        return -1;                                    /* empty, unreadable, or too long to judge here */
    if (f->k.data[3] == '/' || raw) {                 /* absolute (or compared as written): done */
        f->key_end = 3 + r - 1;
        f->k.prefixlen = (3 + r) * 8;
        return 3;
    }
    u32 start = 3;                                    /* relative: the true base, "/", the string again */
    int join = 3;
    u64 dentry, vfsmnt;
    fs_read(f, task);
    if ((int)dfd == AT_FDCWD_) {
        dentry = f->pwd_dentry;
        vfsmnt = f->pwd_mnt;
    } else {
        u64 file = fd_file_of(task, (int)dfd);
        if (!file)
            return -1;
        WIN_BUF(w, W_FILE);
        READ_WIN(w, W_FILE, file);
        dentry = WIN64(w, W_FILE, O_FILE_PATH_DENTRY);
        vfsmnt = WIN64(w, W_FILE, O_FILE_PATH_MNT);
    }
    if (walk_to(s, dentry, vfsmnt, f->root_mnt, f->root_dentry))
        return -1;                                    /* truncated, too deep, outside the root */
    u32 pos = s->pos;
    if (pos > PATH_END)
        return -1;
    u32 n = PATH_END - pos;
    if (n > LPM_DATA - 8)
        return -1;
    opaque(n);
    n &= 255;
    bpf_probe_read_kernel(&f->k.data[3], n, &s->path[pos & PATH_MASK]);
    if (n == 1) {                                     /* the root: "/" + string */
        start = 4;
        join = 3;
    } else {
        f->k.data[(3 + n) & 255] = '/';
        join = 3 + n;
        start = 4 + n;
    }
    if (start > LPM_DATA - 2)
        return -1;
    u32 room = LPM_DATA - start;
    opaque(room);
    r = read_str(&f->k.data[start & 255], room & 255, uptr, user);
    if (r <= 1 || r >= room)
        return -1;                                    /* empty, or too long to judge here */
    f->key_end = start + r - 1;
    f->k.prefixlen = (start + r) * 8;
    return join;
}

static __always_inline int key_string(struct scratch *s, struct fstate *f, u32 kind, u32 slot, s64 dfd, u64 uptr,
                                      u64 task, int raw)
{
    return launder(f, key_string_(s, f, kind, slot, dfd, uptr, task, raw, 1));
}

static __always_inline int key_string_in(struct scratch *s, struct fstate *f, u32 kind, u32 slot, s64 dfd, u64 ptr,
                                         u64 task, int user)
{
    return launder(f, key_string_(s, f, kind, slot, dfd, ptr, task, 0, user));
}

/* Byte-parallel tests (8 bytes per step, no branch per byte: a byte loop costs the verifier too much):
 * 0x80 in each byte of x that equals the byte b. */
#define BYTES(b) (0x0101010101010101ULL * (b))
#define NONZERO(x) ((((u64)(x)) | -((u64)(x))) >> 63)
static __always_inline u64 eq_bytes(u64 x, u64 pattern)
{
    u64 t = x ^ pattern;
    return ~(((t & BYTES(0x7f)) + BYTES(0x7f)) | t | BYTES(0x7f));
}

/* The masks of byte i+k, seen at byte i (from this word and the next). */
#define AHEAD(m, next, k) (((m) >> (8 * (k))) | ((next) << (64 - 8 * (k))))

/* "." / ".." / empty components (or a trailing "/") anywhere in the lexical path f->k.data[3..key_end),
 * and the position of its last "/" (f->last_slash; 2 when there is none). Needs the bytes after the NUL
 * zeroed (key_string does). A true walked base never has such components, so scanning it is harmless. */
static __always_inline int dirty(struct fstate *f)
{
    u64 bad = 0;
    *(volatile u64 *)&f->lw = 0;
    *(volatile u64 *)&f->ls = 0;
    u64 w = *(u64 *)&f->k.data[0];
    u64 s = eq_bytes(w, BYTES('/')) & ~0xFFFFFFULL;  /* bytes 0..2: generation, kind, slot */
    u64 d = eq_bytes(w, BYTES('.')) & ~0xFFFFFFULL;
    u64 z = eq_bytes(w, 0) & ~0xFFFFFFULL;
    u32 last = f->key_end / 8;                        /* the word with the NUL: past it every byte is 0 */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < LPM_DATA / 8; i++) {
        u64 nw = *(u64 *)&f->k.data[(8 * i + 8) & 0x1ff];
        u64 ns = eq_bytes(nw, BYTES('/')), nd = eq_bytes(nw, BYTES('.')), nz = eq_bytes(nw, 0);
        u64 s1 = AHEAD(s, ns, 1), d1 = AHEAD(d, nd, 1), z1 = AHEAD(z, nz, 1);
        u64 s2 = AHEAD(s, ns, 2), d2 = AHEAD(d, nd, 2), z2 = AHEAD(z, nz, 2);
        u64 s3 = AHEAD(s, ns, 3), z3 = AHEAD(z, nz, 3);
        bad |= s & (s1 | z1 | (d1 & (s2 | z2)) | (d1 & d2 & (s3 | z3)));
        if (s) {                                      /* kept in map memory: registers carried across */
            *(volatile u64 *)&f->lw = i;              /* the loop keep the verifier from pruning */
            *(volatile u64 *)&f->ls = s;
        }
        if (i >= last)
            break;
        s = ns;
        d = nd;
        z = nz;
    }
    /* the last "/": the highest marked byte of the last word that had one (branch-free: a branch here
     * would make the verifier explore everything after it once per outcome) */
    u64 last_word = *(volatile u64 *)&f->lw;
    u64 last_s = *(volatile u64 *)&f->ls;
    u64 t = last_s;
    u64 b4 = NONZERO(t >> 32);
    t >>= 32 * b4;
    u64 b2 = NONZERO(t >> 16);
    t >>= 16 * b2;
    u64 b1 = NONZERO(t >> 8);
    u64 has = NONZERO(last_s);
    f->last_slash = 2 + has * (last_word * 8 + 4 * b4 + 2 * b2 + b1 - 2);
    return NONZERO(bad) & NONZERO(f->key_end ^ 4);  /* "/" alone is the root, not a trailing slash */
}

static __always_inline int sname_ok(struct fstate *f, struct fpol *p, u32 kind, u32 slot, u64 flags)
{
    u32 from = f->last_slash + 1;
    u32 end = f->key_end;
    if (from >= end || end > LPM_DATA - 1)
        return 0;
    u32 n = end - from;
    if (!name_len_ok(p, slot, n) || !name_first_ok(p, slot, f->k.data[from & 255]))
        return 0;
    opaque(n);
    n &= 255;
    key_head(&f->h, f, kind, slot);
    bpf_probe_read_kernel(&f->h.data[3], n, &f->k.data[from & 255]);
    u32 len = 3 + n;
    f->h.data[len & 255] = 0;
    f->h.prefixlen = (len + 1) * 8;
    u64 *m = pol_names.lookup((struct lpm_key *)&f->h);
    return m && compat(*m, flags);
}

/* f->h = [mnt ns] + f->k.data[3 .. end) (the lexical path, or its directory) + term; 0 when it does not fit. */
static __always_inline int hazard_key_to(struct fstate *f, u32 end, u8 term)
{
    u32 n = end - 3;
    if (n > LPM_DATA - 6)
        return 0;
    opaque(n);
    n &= 255;
    *(u32 *)&f->h.data[0] = f->ns;
    bpf_probe_read_kernel(&f->h.data[4], n, &f->k.data[3]);
    f->h.data[(4 + n) & 255] = term;
    f->h.prefixlen = (5 + n) * 8;
    return 1;
}

static __always_inline int hazard_key(struct fstate *f, u8 term)
{
    return hazard_key_to(f, f->key_end, term);
}

/* "/proc/self/fd/N" (what glibc passes for fchmodat(AT_SYMLINK_NOFOLLOW) and the like when the kernel call
 * lacks the flag): the file is fd N of the caller. Returns N, or -1. */
static __always_inline s64 proc_self_fd(struct fstate *f)
{
    /* "/proc/se" "lf/fd/" as little-endian words at data[3..17) */
    if (*(u64 *)&f->k.data[3] != 0x65732f636f72702fULL)
        return -1;
    if ((*(u64 *)&f->k.data[11] & 0xFFFFFFFFFFFFULL) != 0x2f64662f666cULL)
        return -1;
    s64 fd = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 17; i < 26; i++) {
        u8 c = f->k.data[i];
        if (!c)
            return i == 17 ? -1 : fd;
        if (c < '0' || c > '9')
            return -1;
        fd = fd * 10 + (c - '0');
    }
    return -1;
}

/* --------------------------------------------------------------------------- lexical discarders */
/* lexkey = the path string's directory (f->k.data[3 .. last_slash), as dirty() found it), its mount
 * namespace (lexical_ok() sets f->ns), type and slot. Returns 0 for the root (its children include the
 * usual symlinks /bin, /lib...) or a directory too long for the key. */
static __always_inline u32 lexkey_fill(struct fstate *f, u32 kind, u32 slot)
{
    u32 m = f->last_slash;
    if (m <= 3 || m - 3 > LEX_DIR)
        return 0;
    u32 n = m - 3;
    __builtin_memset(&f->lk, 0, sizeof(f->lk));
    f->lk.ns = f->ns;
    f->lk.kind = kind;
    f->lk.slot = slot;
    opaque(n);
    n &= 127;                                         /* LEX_DIR < 128 */
    bpf_probe_read_kernel(f->lk.dir, n, &f->k.data[3]);
    return n;
}

/* Is this clean, lexically judged path string (its name approvers already asked) a child of a directory
 * learned as discardable? */
static __always_inline int lex_discarded(struct fstate *f, struct fpol *p, u32 kind, u32 slot, u64 flags, u64 task)
{
    if ((p->has & HAS_EXE) || !lexical_ok(f, task))
        return 0;
    if (!lexkey_fill(f, kind, slot))
        return 0;
    struct lexval *v = lex_discarders.lookup(&f->lk);
    return v && v->epoch == f->lepoch && (v->any_flags || (flags & p->masked) == 0);
}

/* A clean path string was just filtered lexically, its own hazard lookup empty (no symlink at or above
 * its directory): remember the directory when no path or prefix approver may accept any direct child of
 * it ("dir/" + 0x01, as learn_walked) and no hazard lies below it (hazard_dirs "dir\0"). Overwrites f->k. */
static __always_inline void lex_learn(struct fstate *f, struct fpol *p, u32 kind, u32 slot)
{
    u32 m = f->last_slash;
    if (m <= 3 || m >= LPM_DATA - 2)
        return;
    u64 any = 1;
    if (p->has & (slot ? HAS_PATH_T : HAS_PATH_F)) {
        u32 at = m + 1;
        opaque(at);                                   /* keep the mask: the check above does not reach the verifier */
        f->k.data[at & 255] = 1;
        f->k.prefixlen = (m + 2) * 8;
        struct lpm_val *v = pol_paths.lookup((struct lpm_key *)&f->k);
        u64 mask = v ? (v->pmask | v->amask) : 0;
        if (mask & ANY_FLAGS)
            return;
        any = mask == 0;
    }
    if (!hazard_key_to(f, m, 0) || hazard_dirs.lookup((struct lpm_key *)&f->h))
        return;
    if (!lexkey_fill(f, kind, slot))
        return;
    struct lexval v = {.epoch = f->lepoch, .any_flags = any};
    lex_discarders.update(&f->lk, &v);
}

static __always_inline int str_verdict(struct scratch *s, struct fstate *f, struct fpol *p, u32 kind, u32 slot,
                                       s64 dfd, u64 uptr, u64 flags, u64 task, int raw)
{
    u32 has_path = slot ? HAS_PATH_T : HAS_PATH_F;
    u32 has_name = slot ? HAS_NAME_T : HAS_NAME_F;
    if (!(p->has & (has_path | has_name)))
        return (p->has & HAS_EXE) ? V_UNSURE : V_FILTERED;
    int join = key_string(s, f, kind, slot, dfd, uptr, task, raw);
    if (join < 0)
        return V_UNSURE;
    int d = launder(f, dirty(f));
    if (!d && !raw) {                                 /* the name first: a lexical discarder holds for the */
        if ((p->has & has_name) && sname_ok(f, p, kind, slot, flags))   /* directory's path, any name */
            return V_APPROVED;
        if (lex_discarded(f, p, kind, slot, flags, task))
            return V_DISCARDED;
    }
    if (p->has & has_path) {
        struct lpm_val *v = pol_paths.lookup((struct lpm_key *)&f->k);
        if (v && (compat(v->pmask, flags) || compat(v->emask, flags)))
            return V_APPROVED;
    }
    if (d && !raw)
        return V_UNSURE;
    if (slot == SLOT_FILE && !raw) {                  /* a caller's fd through /proc/self/fd: judge its file */
        s64 fd = launder(f, proc_self_fd(f));
        if (fd >= 0) {
            if (!file_read(f, fd_file_of(task, fd)))
                return V_UNSURE;
            f->via_fd = 1;                            /* the record gets the true path, not the string */
            return fd_verdict(s, f, p, kind, flags, task);
        }
    }
    if (raw && (p->has & has_name) && sname_ok(f, p, kind, slot, flags))
        return V_APPROVED;
    if (p->has & HAS_EXE)
        return V_UNSURE;
    if (raw)
        return V_FILTERED;                            /* compared as written: nothing to resolve */
    if (!lexical_ok(f, task) || !hazard_key(f, '/'))
        return V_UNSURE;
    if (hazards.lookup((struct lpm_key *)&f->h))
        return V_UNSURE;                              /* through a symlink (or under /proc): resolve first */
    lex_learn(f, p, kind, slot);
    return V_FILTERED;
}

/* --------------------------------------------------------------------------------------- hazards */
/* The start of a tail-called program that goes on with an event's hazards: scratch and filter state, the
 * task, and the arguments the caller left in f->in (f->kind says whose). */
#define TAIL_STATE(s, f, task, in)                                                                         \
    struct scratch *s = scratch_get();                                                                     \
    struct fstate *f = fstate_get();                                                                       \
    if (!s || !f)                                                                                          \
        return 0;                                                                                          \
    u64 task = bpf_get_current_task();                                                                     \
    struct inflight in;                                                                                    \
    __builtin_memcpy(&in, &f->in, sizeof(in));                                                             \
    filter_begin(f)

/* Is the lexical path now in f->k (built by key_string) a symlink, under one, or above one? */
static __always_inline int hazard_related_(struct fstate *f, u64 task)
{
    lexical_ok(f, task);                              /* sets f->ns */
    if (!hazard_key(f, '/'))
        return 1;
    if (hazards.lookup((struct lpm_key *)&f->h))
        return 1;
    hazard_key(f, 0);
    return hazard_dirs.lookup((struct lpm_key *)&f->h) != 0;
}

static __always_inline int hazard_related(struct fstate *f, u64 task)
{
    return launder(f, hazard_related_(f, task));
}

static __always_inline void hazards_full(void)
{
    u32 i = PS_HAZARDS_FULL;
    u64 one = 1;
    pstate.update(&i, &one);
}

/* Remember the lexical path in f->k as a symlink (or a subtree reached differently): the path + "/",
 * and each ancestor directory + NUL (so a rename of an ancestor carries the hazard along). Then bump the
 * hazard epoch: a lexical discarder learned without this hazard is stale. */
static __always_inline void hazard_add(struct fstate *f, u64 task)
{
    lexical_ok(f, task);
    u64 now = bpf_ktime_get_boot_ns();
    if (!hazard_key(f, '/') || hazards.update((struct lpm_key *)&f->h, &now)) {
        hazards_full();
        ps_bump(PS_HEPOCH);
        return;
    }
    u32 end = f->h.prefixlen / 8 - 1;                 /* index of the trailing "/" */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < LPM_DATA; i++) {
        u32 j = end - 1 - i;
        if (j <= 4 || j >= LPM_DATA)
            break;
        if (f->h.data[j & 255] != '/')
            continue;
        f->h.data[j & 255] = 0;                       /* "ancestor\0": the "/" becomes the terminator */
        f->h.prefixlen = (j + 1) * 8;
        if (hazard_dirs.update((struct lpm_key *)&f->h, &now))
            hazards_full();                           /* lexical discarders rely on every ancestor */
    }
    ps_bump(PS_HEPOCH);
}

/* Count a verdict; returns 1 when the event is to be emitted. */
static __always_inline int settle(u32 kind, int v)
{
    if (v == V_FILTERED) {
        tally(kind, C_FILTERED);
        return 0;
    }
    if (v == V_DISCARDED) {
        tally(kind, C_DISCARDED);
        return 0;
    }
    if (v == V_APPROVED)
        tally(kind, C_APPROVED);
    return 1;
}

/* Forget what the verifier knows about the verdict and the kind: every path of the filter then reaches the
 * record-building code in one state, instead of exploring its walks once per verdict. */
#define forget(f, verdict, k) do { \
    *(volatile u32 *)&(f)->v = (verdict); \
    *(volatile u32 *)&(f)->kind = (k); \
    (verdict) = *(volatile u32 *)&(f)->v; \
    (k) = *(volatile u32 *)&(f)->kind; \
} while (0)

static __always_inline u16 hflags_of(int v)
{
    return v == V_UNSURE ? HF_UNSURE : (v == V_APPROVED ? HF_APPROVED : 0);
}

#endif /* FIMSTREAM_FILTER_H */
