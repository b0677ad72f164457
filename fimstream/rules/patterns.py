"""Globs and regular expressions, compiled once, on bytes or str values.

Globs: `*` and `?` stay inside one path component for path fields ("/etc/*" matches /etc/passwd, not
/etc/ssh/sshd_config); `**` matches any depth ("/etc/**", "/home/**/.bashrc", "/**/.ssh/authorized_keys";
"/a/**/b" also matches /a/b). On other string fields `*` matches anything. Other characters are literal.
Regexes (r"...") use Python's `re` and search anywhere in the value: anchor with ^ and $.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


def to_bytes(s: str) -> bytes:
    """Rule text to kernel bytes: UTF-8, with \\xNN escapes >= 0x80 (lone surrogates) as raw bytes."""
    return s.encode("utf-8", "surrogateescape")


def has_wildcard(s: str) -> bool:
    return "*" in s or "?" in s


@dataclass(frozen=True, eq=False)
class Pattern:
    kind: str  # glob | regex
    source: str
    is_bytes: bool
    is_path: bool
    rx: re.Pattern
    exact: object = None  # glob without wildcards: the one value it matches
    prefix: object = None  # glob "L/**" with a literal L: matches exactly the values starting with "L/"
    literal_prefix: object = None  # glob: the literal text before the first wildcard
    last_literal: object = None  # path glob whose last component has no wildcard: that component
    depth: int | None = None  # path glob without **: number of "/" every match has

    def matches(self, value) -> bool:
        if self.kind == "regex":
            return self.rx.search(value) is not None
        return self.rx.fullmatch(value) is not None

    def __str__(self) -> str:
        return f'r"{self.source}"' if self.kind == "regex" else f'~"{self.source}"'


def glob_regex(glob: str, is_path: bool) -> str:
    """Regex source (str) equivalent to a glob."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("/**/", i) and is_path:
            out.append("(?:/.*)?/")  # zero or more directories
            i += 4
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*" if is_path else ".*")
            i += 1
        elif c == "?":
            out.append("[^/]" if is_path else ".")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_glob(glob: str, is_bytes: bool, is_path: bool) -> Pattern:
    conv = to_bytes if is_bytes else (lambda s: s)
    src = glob_regex(glob, is_path)
    rx = re.compile(conv(src), re.DOTALL)
    first = min([i for i in (glob.find("*"), glob.find("?")) if i >= 0], default=len(glob))
    literal_prefix = conv(glob[:first])
    exact = conv(glob) if not has_wildcard(glob) else None
    prefix = None
    if glob.endswith("/**") and not has_wildcard(glob[:-3]):
        prefix = conv(glob[:-2])
    last_literal = depth = None
    if is_path:
        last = glob.rpartition("/")[2]
        if "/" in glob and last and not has_wildcard(last):
            last_literal = conv(last)
        if "**" not in glob:
            depth = glob.count("/")
    return Pattern("glob", glob, is_bytes, is_path, rx, exact, prefix, literal_prefix, last_literal, depth)


def compile_regex(source: str, is_bytes: bool) -> Pattern:
    rx = re.compile(to_bytes(source) if is_bytes else source, re.DOTALL)
    return Pattern("regex", source, is_bytes, False, rx)


def glob_possible_under(p: Pattern, directory: bytes) -> bool:
    """Can path glob `p` match some path strictly under `directory`? (False only when certain.)"""
    d = directory.rstrip(b"/") + b"/"
    lp = p.literal_prefix
    if not (lp.startswith(d) or d.startswith(lp)):
        return False
    if p.depth is not None and p.depth < d.count(b"/"):
        return False  # every match has fewer components than anything under the directory
    if p.exact is not None:
        return p.exact.startswith(d) and len(p.exact) > len(d)
    return True


def glob_covers(p: Pattern, directory: bytes) -> bool:
    """Does path glob `p` match EVERY path strictly under `directory`? (True only when certain.)"""
    if p.kind != "glob" or p.prefix is None:
        return False
    return (directory.rstrip(b"/") + b"/").startswith(p.prefix)
