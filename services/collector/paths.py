"""Userspace canonicalisation of the paths the kernel could not resolve itself.

For syscalls that take a path string and return no fd (unlink, rename, chmod, chown, a failed open or
exec), the record carries the caller's string and, when it is relative, the kernel's true path of the
directory it is relative to (the dirfd's file or the cwd). Here the two are joined and resolved the way
the kernel would: component by component inside the process's root (/proc/<pid>/root), following
symlinked parents (absolute targets restart at that root), `..` going to the real parent, and the last
component followed only when the syscall follows it (chmod, chown, open without O_NOFOLLOW).

A path counts as resolved (PF_UNRESOLVED cleared) when every directory above the last component was
found; a missing last component is fine (it is what unlink/rename removed, or what a failed open did
not find). When the process has exited and its root is not known to be ours, or a directory is missing
or unreadable, the lexically normalised string is kept and the bit stays set.

This runs after the syscall, so it is racy by nature (a directory renamed in between resolves to its
new place); fd-based events (open, fchmod, fchown, exec) never go through here.
"""
from __future__ import annotations

import os
import stat as stat_mod
import time

from fimstream.collector.records import PF_DEPTH, PF_OUTSIDE_ROOT, PF_TRUNCATED, PF_UNRESOLVED

MAXSYMLINKS = 40
_BASE_UNUSABLE = PF_DEPTH | PF_TRUNCATED | PF_OUTSIDE_ROOT


def join(base: bytes, name: bytes) -> bytes:
    """The caller's string against its base directory (both as the process sees them)."""
    if name.startswith(b"/") or not base:
        return name or base
    if not name:
        return base  # AT_EMPTY_PATH: the dirfd itself
    return (base if base.endswith(b"/") else base + b"/") + name


def lexical(path: bytes) -> bytes:
    """Collapse '//', '.', '..' without looking at the filesystem (what is left when we cannot)."""
    out: list[bytes] = []
    for part in path.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return b"/" + b"/".join(out)


def resolve_in_root(root: bytes, path: bytes, follow_last: bool) -> tuple[bytes, bool]:
    """Resolve an absolute path inside `root` (b"" = our own root). Returns (path, resolved)."""
    pending = [p for p in reversed(path.split(b"/")) if p and p != b"."]
    done: list[bytes] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == b"..":
            if done:
                done.pop()
            continue
        last = not pending
        if last and not follow_last:
            done.append(part)
            break
        candidate = b"/" + b"/".join(done + [part]) if done else b"/" + part
        try:
            st = os.lstat(root + candidate)
        except FileNotFoundError:
            done.append(part)
            if last:
                break  # the leaf itself is absent: unlinked, renamed away, or never existed
            return lexical(b"/" + b"/".join(done + list(reversed(pending)))), False
        except OSError:
            done.append(part)
            return lexical(b"/" + b"/".join(done + list(reversed(pending)))), False
        if stat_mod.S_ISLNK(st.st_mode):
            links += 1
            if links > MAXSYMLINKS:
                return lexical(path), False
            try:
                target = os.readlink(root + candidate)
            except OSError:
                return lexical(path), False
            if target.startswith(b"/"):
                done = []
            pending.extend(p for p in reversed(target.split(b"/")) if p and p != b".")
            continue
        done.append(part)
    return (b"/" + b"/".join(done)) if done else b"/", True


class Resolver:
    """Resolves unresolved file slots for the collector; `root_of(pid)` says where a process's root is
    when /proc/<pid> is gone (the process cache knows whether its root was ours).

    Directory resolutions are cached for DIR_TTL seconds per (root, directory): failed opens along a
    search path (ld.so, Python imports, locale files) ask for the same few directories thousands of
    times a second. A directory renamed within that window may resolve to its old place (this whole
    step is after the fact anyway)."""

    DIR_TTL = 0.5
    DIR_CACHE_MAX = 8192

    def __init__(self, root_of=None, proc: bytes = b"/proc"):
        self.proc = proc
        self.root_of = root_of or (lambda pid: None)
        self.resolved = 0
        self.unresolved = 0
        self._dirs: dict[tuple[bytes, bytes], tuple[float, bytes, bool]] = {}

    def root_prefix(self, pid: int) -> bytes | None:
        prefix = b"%s/%d/root" % (self.proc, pid)
        try:
            os.stat(prefix)
            return prefix
        except OSError:
            return self.root_of(pid)  # b"" when the process shared our root, None when unknown

    def _dir(self, root: bytes, directory: bytes) -> tuple[bytes, bool]:
        now = time.monotonic()
        key = (root, directory)
        hit = self._dirs.get(key)
        if hit is not None and now - hit[0] < self.DIR_TTL:
            return hit[1], hit[2]
        path, ok = resolve_in_root(root, directory, True)
        if ok:  # resolve_in_root accepts an absent last component; a directory must exist
            try:
                ok = stat_mod.S_ISDIR(os.stat(root + path).st_mode)
            except OSError:
                ok = False
        if len(self._dirs) >= self.DIR_CACHE_MAX:
            self._dirs.clear()
        self._dirs[key] = (now, path, ok)
        return path, ok

    def resolve(self, pid: int, base: bytes, base_flags: int, name: bytes, follow_last: bool
                ) -> tuple[bytes, int, bytes | None]:
        """Returns (path, path_flags, root prefix usable to stat it or None)."""
        joined = join(base, name)
        if joined.startswith(b"/proc/") and joined[6:].split(b"/", 1)[0] in (b"self", b"thread-self"):
            joined = b"/proc/%d" % pid + joined[6:].partition(b"/")[1] + joined[6:].partition(b"/")[2]
            name = joined  # "self" is whoever reads /proc: here, the event's process
        flags = base_flags & ~PF_UNRESOLVED
        if base_flags & _BASE_UNUSABLE and not name.startswith(b"/"):
            self.unresolved += 1
            return joined, flags | PF_UNRESOLVED, None
        if not joined.startswith(b"/"):
            self.unresolved += 1
            return joined, flags | PF_UNRESOLVED, None
        if not name.startswith(b"/") and b"/" not in name.strip(b"/") and name not in (b".", b"..") \
                and not follow_last:
            # one component relative to a kernel-resolved directory: nothing left to look up
            self.resolved += 1
            return join(base, name.strip(b"/")) if name else base, flags, self.root_prefix(pid)
        root = self.root_prefix(pid)
        if root is None:
            self.unresolved += 1
            return lexical(joined), flags | PF_UNRESOLVED, None
        parent, _, leaf = joined.rstrip(b"/").rpartition(b"/")
        if leaf in (b"", b".", b".."):
            path, ok = resolve_in_root(root, joined, follow_last)
        else:
            directory, ok = self._dir(root, parent or b"/")
            path = (directory.rstrip(b"/") + b"/" + leaf) if ok else lexical(joined)
            if ok and follow_last:
                try:
                    if stat_mod.S_ISLNK(os.lstat(root + path).st_mode):
                        path, ok = resolve_in_root(root, path, True)
                except OSError:
                    pass  # absent leaf: what a failed open or a removal names
        if ok:
            self.resolved += 1
            return path, flags, root
        self.unresolved += 1
        return path, flags | PF_UNRESOLVED, None
