"""The rules, in the kernel: RuleSet.kernel_policy() loaded into bpf/filter.h's maps, discarders learned
from the rules, the symlink hazards that keep path-string filtering sound, and the userspace second look
at events the kernel passed without an approver's word.

Map layout (bpf/filter.h has the C side):

    pstate        u64[8]: 0 generation in force, 1 policy epoch, 2 kernel epoch (renames, mounts),
                  3 "a symlink could not be recorded" (path strings then all go to userspace), 4 policy loaded,
                  5 hazard epoch (bumped by the kernel after each hazard it records), 6 removal epoch
                  (unlink, rmdir: ends the entries whose inode has no generation number)
    fpolicy       [generation * NKINDS + kind] -> mode (pass/drop/filter), which lookups can hit, type-wide
                  flags and mode approvers, union of the entries' flag masks
    pol_inodes    (ino, kernel dev, generation, kind, slot) -> flags mask
    pol_names     LPM [generation, kind, slot] + name + NUL -> flags mask
    pol_paths     LPM [generation, kind, slot] + bytes -> (prefix mask, exact mask, marker mask), where the
                  bytes are a prefix, an exact path + NUL, or a directory marker "dir/" + 0x01 saying some
                  approver may accept a direct child of dir; every entry's prefix mask is merged with the
                  masks of the prefixes above it, so the longest match alone answers
    discarders    LRU (parent dentry, vfsmount, root dentry, root vfsmount) -> epoch, what the entry was
                  learned from (inode pointer, i_ino + i_generation, parent, name), per-kind bits (userspace /
                  kernel restricted / all); the same key with the file's dentry | 1: a file entry (one file
                  whose path no approver takes, in a directory where some approver takes a child)
    dcand         LRU (ktime, tid) of an emitted fd-based record -> its directory's discarder key
    lex_discarders  LRU (mount ns, kind, slot, directory bytes) -> epoch (policy << 40 + hazard), any flags:
                  a directory no path string's child can be approved under, learned by the kernel
    hazards       LPM [mount ns] + path + "/" of known symlinks (and new mount points); hazard_dirs their
                  ancestors + NUL; lexical_ns: namespaces whose symlinks were scanned
    written       LRU struct file * -> policy epoch + 1: the file's first write was judged

Masks: 0 no approver, ANY (bit 63) any flags, else the approver needs one of these flag bits.

Update protocol: the inactive generation's entries are deleted, the new policy is written there, the
generation flips (one array element), then the policy epoch is bumped (invalidates every discarder and
every "first write" mark). The kernel reads the epoch before the generation, so an event is judged by one
whole policy and whatever it learns from an old policy is already stale.
"""
from __future__ import annotations

import ctypes as ct
import logging
import os
import stat as stat_mod
import threading
import time
from collections import OrderedDict

from fimstream.collector import records as R
from fimstream.collector.event import EVENT_TYPES, TYPE_INDEX, KernelFile
from fimstream.rules.approvers import KernelPolicy, kernel_dev

log = logging.getLogger(__name__)

ANY = 1 << 63
MODE = {"pass": 0, "drop": 1, "filter": 2}
HAS_INODE_F, HAS_INODE_T, HAS_NAME_F, HAS_NAME_T, HAS_PATH_F, HAS_PATH_T, HAS_EXE, HAS_LEARN = (1 << i for i in range(8))
SLOTS = {"file": 0, "target": 1}
PS_GEN, PS_PEPOCH, PS_KEPOCH, PS_HAZARDS_FULL, PS_ON, PS_HEPOCH, PS_REPOCH = range(7)
LPM_DATA = 256
HF_UNSURE, HF_APPROVED = 1, 2
H_HFLAGS, H_KTIME, H_TID = 1, 3, 8
KIND_OF = {name: kind for kind, name in R.KIND_NAMES.items() if name in EVENT_TYPES}
# file types whose records the file sensor judges in the kernel (the others are judged here only)
KERNEL_KINDS = {R.RK_OPEN, R.RK_CREATE, R.RK_UNLINK, R.RK_RMDIR, R.RK_RENAME, R.RK_CHMOD, R.RK_CHOWN,
                *R.FILE_KIND_NAMES}
# filesystems whose symlinks are not worth scanning: every path string under them goes to userspace
OPAQUE_FS = {"proc", "sysfs"}
SKIP_FS = {"cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "bpf", "configfs", "fusectl", "pstore",
           "efivarfs", "binfmt_misc", "autofs", "nsfs", "hugetlbfs", "mqueue", "devpts", "rpc_pipefs"}

LIMITS = {"POL_INODES_MAX": 4096, "POL_PATHS_MAX": 16384, "POL_NAMES_MAX": 4096, "HAZARDS_MAX": 65536,
          "DISCARDERS_MAX": 65536, "CANDIDATES_MAX": 16384, "WRITTEN_MAX": 65536,
          "LEX_DISCARDERS_MAX": 8192}


def policy_limits() -> dict[str, int]:
    """Sizes of filter.h's maps (-D macros)."""
    return dict(LIMITS)


def _mask(m: int) -> int:
    return ANY if m == 0 else m


def _merge(a: int | None, b: int) -> int:
    return b if a is None else a | b


def inode_bit(ino: int, kernel_dev: int) -> int:
    """The bit of (dev, ino) in a type's 1024-bit inode filter (filter.h inode_bit)."""
    return (((ino ^ (kernel_dev << 32)) * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 54


def _words(array, bits: int) -> None:
    """A bit set (an int) into a u64 array field of a map entry (filter.h bit_set reads it)."""
    for i in range(len(array)):
        array[i] = (bits >> (64 * i)) & (2**64 - 1)


# ------------------------------------------------------------------------------------ compiled form
class Compiled:
    """One KernelPolicy as map contents (independent of bcc: tests compare it with KernelPolicy.passes)."""

    def __init__(self, policy: KernelPolicy, learn: bool = True):
        self.policy = policy
        self.types: dict[int, tuple] = {}  # kind -> (mode, has, flags, mode_bits, masked)
        self.inodes: dict[tuple, int] = {}  # (ino, kernel dev, kind, slot) -> mask
        self.names: dict[tuple, int] = {}  # (kind, slot, key bytes) -> mask
        self.name_lens: dict[int, int] = {}  # kind -> the name approvers' lengths, 256 bits per slot
        self.name_firsts: dict[int, int] = {}  # kind -> the name approvers' first bytes, 256 bits per slot
        self.inode_bits: dict[int, int] = {}  # kind -> the inode approvers' inode_bit()s (1024 bits)
        self.paths: dict[tuple, list] = {}  # (kind, slot, key bytes) -> [pmask, emask, amask]
        for name, tp in policy.types.items():
            kind = KIND_OF.get(name)
            if kind is None:
                continue
            has = HAS_LEARN if learn and tp.mode != "drop" and kind in KERNEL_KINDS else 0
            if tp.mode != "filter" or (tp.attrs and kind in KERNEL_KINDS):  # attrs: a userspace-only test
                self.types[kind] = (MODE["pass" if tp.mode == "filter" else tp.mode], has, 0, 0, 0)
                continue
            masked = 0
            for slot_name, slot in SLOTS.items():
                for (dev, ino), m in tp.inodes.get(slot_name, {}).items():
                    self.inodes[(ino, kernel_dev(dev), kind, slot)] = _mask(m)
                    self.inode_bits[kind] = self.inode_bits.get(kind, 0) | 1 << inode_bit(ino, kernel_dev(dev))
                    has |= HAS_INODE_F << slot
                    masked |= m
                for name_b, m in tp.names.get(slot_name, {}).items():
                    key = name_b[:LPM_DATA - 4] + b"\0"
                    self.names[(kind, slot, key)] = _merge(self.names.get((kind, slot, key)), _mask(m))
                    self.name_lens[kind] = self.name_lens.get(kind, 0) | 1 << (256 * slot + len(key) - 1)
                    self.name_firsts[kind] = self.name_firsts.get(kind, 0) | 1 << (256 * slot + key[0])
                    has |= HAS_NAME_F << slot
                    masked |= m
                exact = tp.paths.get(slot_name, {})
                prefixes = dict(tp.prefixes.get(slot_name, {}))
                entries: dict[bytes, list] = {}
                for path, m in exact.items():
                    if len(path) + 1 <= LPM_DATA - 3:
                        e = entries.setdefault(path + b"\0", [0, 0, 0])
                        e[1] |= _mask(m)
                    else:  # too long for a key: its first bytes as a prefix (approves more, never less)
                        prefixes[path[:LPM_DATA - 4]] = prefixes.get(path[:LPM_DATA - 4], 0) | m
                    self._marker(entries, path, m)
                    masked |= m
                for prefix, m in prefixes.items():
                    prefix = prefix[:LPM_DATA - 4]
                    entries.setdefault(prefix, [0, 0, 0])[0] |= _mask(m)
                    if not prefix.endswith(b"/"):
                        self._marker(entries, prefix, m)
                    masked |= m
                if entries:
                    has |= HAS_PATH_F << slot
                plist = [(p, e[0]) for p, e in entries.items() if e[0]]
                for key, e in entries.items():
                    for p, pm in plist:  # the longest match alone answers: merge the prefixes above it
                        if key.startswith(p):
                            e[0] |= pm
                    self.paths[(kind, slot, key)] = e
            if tp.exes or tp.exe_inodes:
                has |= HAS_EXE
            self.types[kind] = (MODE["filter"], has, tp.flags, tp.mode_bits, masked)

    @staticmethod
    def _marker(entries: dict, path: bytes, m: int) -> None:
        """`dir/` + 0x01 for the directory holding `path`: a discarder learned there would be wrong."""
        d = path.rpartition(b"/")[0] + b"/"
        if len(d) + 1 <= LPM_DATA - 3:
            entries.setdefault(d + b"\x01", [0, 0, 0])[2] |= _mask(m)


# --------------------------------------------------------------------------------------- the maps
class KernelFilter:
    """Owns filter.h's maps in one loaded Program."""

    def __init__(self, bpf, *, learn: bool = True):
        self.bpf = bpf
        self.learn = learn
        self.pstate = bpf[b"pstate"]
        self.fpolicy = bpf[b"fpolicy"]
        self.inodes = bpf[b"pol_inodes"]
        self.names = bpf[b"pol_names"]
        self.paths = bpf[b"pol_paths"]
        self.hazards = bpf[b"hazards"]
        self.hazard_dirs = bpf[b"hazard_dirs"]
        self.lexical_ns = bpf[b"lexical_ns"]
        self.discarders = bpf[b"discarders"]
        self.dcand = bpf[b"dcand"]
        self.gen = 0
        self.pepoch = 0
        self.last_flip = 0.0
        self.compiled: Compiled | None = None
        self.ruleset = None
        self.modes: list[int] = [0] * len(EVENT_TYPES)  # userspace view, by event type index: 0 pass, 1 drop, 2 filter
        self.stats = {"loads": 0, "load_ms": 0, "userspace_filtered": 0, "unsure": 0, "learned": 0,
                      "learn_misses": 0, "hazards": 0, "hazard_scan_s": 0.0}
        self._discard_cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ policy
    def load(self, ruleset) -> Compiled:
        """Compile the rule set's kernel policy, write it into the inactive generation and flip."""
        t0 = time.monotonic()
        compiled = Compiled(ruleset.kernel_policy(), learn=self.learn)
        self._flip(compiled, ruleset)
        self.stats["loads"] += 1
        self.stats["load_ms"] = round((time.monotonic() - t0) * 1000)
        log.info("kernel policy %s loaded into generation %d in %d ms: %d types, %d path entries, %d names, "
                 "%d inodes", compiled.policy.version[:12], self.gen, self.stats["load_ms"], len(compiled.types),
                 len(compiled.paths), len(compiled.names), len(compiled.inodes))
        return compiled

    def unload(self) -> None:
        """Back to "no rules": every type passes (the same flip, with an empty policy)."""
        self._flip(None, None)

    def _flip(self, compiled: Compiled | None, ruleset) -> None:
        with self._lock:
            new = self.gen ^ 1
            wait = 1.0 - (time.monotonic() - self.last_flip)
            if wait > 0:  # programs that read the old generation a moment ago are long done after this
                time.sleep(wait)
            self._clear(new)
            self._write(new, compiled)
            self._ps(PS_ON, int(compiled is not None))
            self._ps(PS_GEN, new)  # flip, then invalidate what was learned before
            self._bump_pepoch()
            self.gen = new
            self.last_flip = time.monotonic()
            self.compiled = compiled
            self.ruleset = ruleset
            modes = [0] * len(EVENT_TYPES)
            for name, tp in (compiled.policy.types.items() if compiled else ()):
                if name in TYPE_INDEX:
                    modes[TYPE_INDEX[name]] = MODE[tp.mode]
            self.modes = modes
            self._discard_cache.clear()

    def _bump_pepoch(self) -> None:
        """Make stale whatever the kernel learned: discarders, lexical discarders, first-write marks."""
        self.pepoch += 1
        self._ps(PS_PEPOCH, self.pepoch)

    def _ps(self, i: int, v: int) -> None:
        self.pstate[ct.c_int(i)] = ct.c_uint64(v)

    def _clear(self, gen: int) -> None:
        for table in (self.paths, self.names):
            for k in list(table.keys()):
                if k.data[0] == gen:
                    del table[k]
        for k in list(self.inodes.keys()):
            if k.gen == gen:
                del self.inodes[k]

    def _lpm_key(self, table, head: bytes, body: bytes):
        k = table.Key()
        raw = head + body
        k.prefixlen = len(raw) * 8
        ct.memmove(ct.addressof(k) + 4, raw, len(raw))
        return k

    def _write(self, gen: int, c: Compiled | None) -> None:
        """A generation's entries (None: every type passes, no entries)."""
        for kind in range(R.NKINDS):
            v = self.fpolicy.Leaf()
            mode, has, flags, mode_bits, masked = c.types.get(kind, (0, 0, 0, 0, 0)) if c else (0, 0, 0, 0, 0)
            v.mode, v.has, v.flags, v.mode_bits, v.masked = mode, has, flags, mode_bits, masked
            _words(v.nlen, c.name_lens.get(kind, 0) if c else 0)
            _words(v.nfirst, c.name_firsts.get(kind, 0) if c else 0)
            _words(v.ibloom, c.inode_bits.get(kind, 0) if c else 0)
            self.fpolicy[ct.c_int(gen * R.NKINDS + kind)] = v
        if c is None:
            return
        for (ino, dev, kind, slot), m in c.inodes.items():
            k = self.inodes.Key()
            k.ino, k.dev, k.gen, k.kind, k.slot = ino, dev, gen, kind, slot
            self.inodes[k] = ct.c_uint64(m)
        for (kind, slot, body), m in c.names.items():
            self.names[self._lpm_key(self.names, bytes((gen, kind, slot)), body)] = ct.c_uint64(m)
        for (kind, slot, body), (pm, em, am) in c.paths.items():
            v = self.paths.Leaf()
            v.pmask, v.emask, v.amask = pm, em, am
            self.paths[self._lpm_key(self.paths, bytes((gen, kind, slot)), body)] = v

    # ---------------------------------------------------------------------------------- hazards
    def add_hazard(self, ns: int, path: bytes) -> bool:
        """A symlink (or a subtree reached another way) at `path` in mount namespace `ns`."""
        head = ns.to_bytes(4, "little")
        body = path.rstrip(b"/") + b"/"
        if len(body) + 4 > LPM_DATA:
            return False
        try:
            self.hazards[self._lpm_key(self.hazards, head, body)] = ct.c_uint64(0)
            d = body[:-1]
            while True:
                d = d.rpartition(b"/")[0]
                if not d:
                    break
                self.hazard_dirs[self._lpm_key(self.hazard_dirs, head, d + b"\0")] = ct.c_uint64(0)
        except Exception:  # full: trust no path string
            self._ps(PS_HAZARDS_FULL, 1)
            return False
        self.stats["hazards"] += 1
        return True

    def scan_hazards(self, ns: int | None = None, root: str = "/", limit: int = LIMITS["HAZARDS_MAX"] // 2) -> int:
        """Record every symlink of the namespace's filesystems (pseudo filesystems: their whole mount), then
        let the kernel judge that namespace's path strings lexically. Returns the symlinks found; on
        overflow the namespace stays non-lexical (every path string goes to userspace)."""
        t0 = time.monotonic()
        ns = ns if ns is not None else mnt_ns_of("self")
        count = 0
        self.add_hazard(ns, b"/proc")
        points = set()
        tops = []
        for point, fstype in read_mounts():
            points.add(point)
            if fstype in OPAQUE_FS:
                if point != "/":
                    self.add_hazard(ns, os.fsencode(point))
            elif fstype not in SKIP_FS:
                tops.append(point)
        base = root.rstrip("/")
        stack = [os.fsencode(p) for p in sorted(set(tops))]
        while stack:
            rel = stack.pop()
            try:
                it = os.scandir(base.encode() + rel if base else rel)
            except OSError:
                continue
            with it:
                for entry in it:
                    child = (rel.rstrip(b"/") + b"/" + entry.name)
                    try:
                        if entry.is_symlink():
                            count += 1
                            if count > limit or not self.add_hazard(ns, child):
                                log.warning("symlink scan stopped at %d entries: path strings go to userspace", count)
                                return count
                        elif entry.is_dir(follow_symlinks=False) and os.fsdecode(child) not in points:
                            stack.append(child)
                    except OSError:
                        continue
        st = os.stat(root)
        v = self.lexical_ns.Leaf()
        v.ino, v.dev = st.st_ino, kernel_dev(st.st_dev)
        self.lexical_ns[ct.c_uint32(ns)] = v
        with self._lock:  # lexical discarders learned before these hazards were known are stale
            self._bump_pepoch()
        self.stats["hazard_scan_s"] = round(time.monotonic() - t0, 1)
        log.info("%d symlinks recorded for mount namespace %d in %.1f s: its path strings are judged lexically",
                 count, ns, time.monotonic() - t0)
        return count

    # --------------------------------------------------------------------------- userspace look
    def admit(self, ev, procs) -> bool:
        """Should this decoded event be published? Types no rule needs are dropped (the process sensor's
        records reach userspace anyway: the cache needs them); events the kernel passed unsure are judged
        by KernelPolicy.passes on their resolved paths. Emitted fd-based events may teach a discarder."""
        mode = self.modes[ev.type]
        if mode == 1:
            self.stats["userspace_filtered"] += 1
            return False
        if mode != 2:
            if mode == 0 and self.compiled is not None and ev.file is not None:
                self._maybe_learn(ev)
            return True
        hflags = ev.hdr[H_HFLAGS]
        if hflags & HF_UNSURE or ev.kind not in KERNEL_KINDS:
            self.stats["unsure"] += 1
            if not self.compiled.policy.passes(event_view(ev, procs)):
                self.stats["userspace_filtered"] += 1
                return False
        if ev.file is not None and not hflags & HF_UNSURE:
            self._maybe_learn(ev)
        return True

    def _maybe_learn(self, ev) -> None:
        """An emitted fd-based event whose directory no rule can ever match (RuleSet.can_discard): ask the
        kernel for that directory's key (dcand) and set this type's userspace bit there."""
        if not self.learn or not isinstance(ev.file, KernelFile) or self.ruleset is None:
            return
        path = ev.file.path
        if ev.file.flags or not path.startswith(b"/"):
            return
        directory = path.rpartition(b"/")[0] or b"/"
        name = EVENT_TYPES[ev.type]
        key = (name, directory)
        verdict = self._discard_cache.get(key)
        if verdict is None:
            verdict = self.ruleset.can_discard(name, directory=directory)
            self._discard_cache[key] = verdict
            if len(self._discard_cache) > 20000:
                self._discard_cache.popitem(last=False)
        if not verdict:
            return
        kind = KIND_OF.get(name)
        if kind is None or kind not in KERNEL_KINDS:
            return
        ck = self.dcand.Key()
        ck.ktime, ck.tid = ev.hdr[H_KTIME], ev.hdr[H_TID]
        try:
            cand = self.dcand[ck]
        except KeyError:
            self.stats["learn_misses"] += 1
            return
        bit = 1 << kind
        dk = self.discarders.Key()
        ct.memmove(ct.byref(dk), ct.byref(cand.dk), ct.sizeof(dk))
        try:
            cur = self.discarders[dk]
            same = all(getattr(cur, f) == getattr(cand.dv, f) for f in ("epoch", "inode", "parent", "name", "len", "ino", "sb", "igen"))
        except KeyError:
            same = False
        v = self.discarders.Leaf()
        ct.memmove(ct.byref(v), ct.byref(cand.dv), ct.sizeof(v))
        if same:
            v.ubits, v.rbits, v.fbits = cur.ubits | bit, cur.rbits, cur.fbits
        else:
            v.ubits, v.rbits, v.fbits = bit, 0, 0
        self.discarders[dk] = v
        self.stats["learned"] += 1


def event_view(ev, procs) -> dict:
    """The fields KernelPolicy.passes reads, from a decoded Event (attr approvers: path flags, attrs, cred)."""
    out = {"event_type": EVENT_TYPES[ev.type], "flags": ev.flags, "mode": ev.mode, "attrs": ev.attrs or {}}
    for slot in ("file", "target"):
        f = getattr(ev, slot)
        out[slot] = None if f is None else {"path": f.path, "dev": f.dev, "ino": f.ino, "path_flags": f.flags}
    c = ev.cred
    out["cred"] = None if c is None else {name: getattr(c, name) for name in c.__slots__}
    info = procs.procs.get(ev.pid)
    out["process"] = {"exe": info.exe, "exe_dev": info.exe_dev, "exe_ino": info.exe_ino} if info else \
        {"exe": b"", "exe_dev": 0, "exe_ino": 0}
    return out


def mnt_ns_of(pid: str | int) -> int:
    """Inode number of a process's mount namespace ("mnt:[4026531840]")."""
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def read_mounts(root: str = "/") -> list[tuple[str, str]]:
    """(mount point, fs type) of this mount namespace, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            point = parts[4].encode().decode("unicode_escape")
            out.append((point, parts[sep + 1]))
    return out
