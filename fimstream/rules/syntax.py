r"""Expression syntax: tokens, AST and a Pratt parser.

    expr    := expr '||' expr | expr '&&' expr | '!' expr | compare | '(' expr ')'
    compare := value [op value | ['not'] 'in' list]      op: == != < <= > >= =~ !~
    value   := value '|' value | value '^' value | value '&' value | '^' value | primary
    primary := NAME ['[' STRING ']'] | NUMBER | DURATION | STRING | ~"glob" | r"regex" | true | false | list

Precedence, loosest first: || (or), && (and), ! (not), comparisons (not chainable), |, ^, &.
So `open.flags & O_CREAT > 0` reads as `(open.flags & O_CREAT) > 0`, and `!a == b` as `!(a == b)`.
Numbers: decimal, 0x hex, 0o or leading-0 octal (04000 == S_ISUID). Durations: 10s, 5m, 100ms, 1h, 2d.
Strings: "..." or '...', escapes \\ \" \' \n \t \xNN (NN >= 80 is a raw byte, for non-UTF-8 paths).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .constants import DURATION_UNITS
from .errors import ExprError, Loc


# ------------------------------------------------------------------------------------------------ AST
@dataclass(eq=False)
class Node:
    at: Loc = field(repr=False)


@dataclass(eq=False)
class Lit(Node):
    value: object
    kind: str  # int | duration | str | glob | regex | bool


@dataclass(eq=False)
class ListLit(Node):
    items: list


@dataclass(eq=False)
class Name(Node):
    name: str
    key: str | None = None  # k8s.labels["app.kubernetes.io/name"]


@dataclass(eq=False)
class Unary(Node):
    op: str  # '!' | '^'
    operand: Node


@dataclass(eq=False)
class Binary(Node):
    op: str  # '&&' '||' '&' '|' '^'
    left: Node
    right: Node


@dataclass(eq=False)
class Compare(Node):
    op: str  # == != < <= > >= =~ !~ in notin
    left: Node
    right: Node


# --------------------------------------------------------------------------------------------- lexer
@dataclass
class Token:
    kind: str  # name num dur str glob regex op eof
    value: object
    start: int
    end: int
    text: str


_OPS = ["==", "!=", "<=", ">=", "=~", "!~", "&&", "||", "<", ">", "!", "&", "|", "^", "(", ")", "[", "]", ","]
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*")
_NUM_RE = re.compile(r"0[xX][0-9a-fA-F]+|0[oO][0-7]+|[0-9]+")
_UNIT_RE = re.compile(r"(ns|us|ms|s|m|h|d)(?![A-Za-z0-9_])")
_KEYWORDS = {"and": "&&", "or": "||", "not": "not", "in": "in", "true": "true", "false": "false"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def _read_string(src: str, pos: int, where, raw: bool) -> tuple[str, int]:
    """Read a quoted string starting at the quote. Returns (value, end). \\xNN >= 0x80 becomes a lone
    surrogate (U+DC80..U+DCFF), i.e. the surrogateescape form of that byte."""
    quote = src[pos]
    i = pos + 1
    out = []
    while i < len(src):
        c = src[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(src):
            n = src[i + 1]
            if raw:  # regex: keep escapes for the regex engine, only \" is unescaped to "
                out.append(n if n == quote else c + n)
                i += 2
                continue
            if n in _ESCAPES:
                out.append(_ESCAPES[n])
                i += 2
                continue
            if n == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", src[i + 2:i + 4] or ""):
                b = int(src[i + 2:i + 4], 16)
                out.append(chr(b) if b < 0x80 else chr(0xDC00 + b))
                i += 4
                continue
            raise ExprError(f"unknown escape \\{n} in string (use \\\\ for a backslash)", Loc(where, i))
        out.append(c)
        i += 1
    raise ExprError(f"unterminated string: expected a closing {quote}", Loc(where, pos))


def tokenize(src: str, where) -> list[Token]:
    toks: list[Token] = []
    i, n = 0, len(src)
    while True:
        while i < n and src[i].isspace():
            i += 1
        if i >= n:
            toks.append(Token("eof", None, n, n, "end of expression"))
            return toks
        c = src[i]
        if c in "\"'":
            value, end = _read_string(src, i, where, raw=False)
            toks.append(Token("str", value, i, end, src[i:end]))
            i = end
            continue
        if c in "r~" and i + 1 < n and src[i + 1] in "\"'" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            value, end = _read_string(src, i + 1, where, raw=(c == "r"))
            toks.append(Token("regex" if c == "r" else "glob", value, i, end, src[i:end]))
            i = end
            continue
        if c.isdigit():
            m = _NUM_RE.match(src, i)
            text = m.group(0)
            if text.startswith(("0x", "0X")):
                value = int(text, 16)
            elif text.startswith(("0o", "0O")) or (len(text) > 1 and text[0] == "0"):
                if not re.fullmatch(r"0[oO]?[0-7]+", text):
                    raise ExprError(f"bad octal number {text!r}", Loc(where, i))
                value = int(text.lstrip("0oO") or "0", 8)
            else:
                value = int(text)
            end = m.end()
            unit = _UNIT_RE.match(src, end)
            if unit:
                toks.append(Token("dur", value * DURATION_UNITS[unit.group(1)], i, unit.end(), src[i:unit.end()]))
                i = unit.end()
                continue
            if end < n and (src[end].isalnum() or src[end] == "_"):
                raise ExprError(f"bad number {src[i:end + 1]!r}: expected digits or a duration unit "
                                f"({', '.join(DURATION_UNITS)})", Loc(where, i))
            toks.append(Token("num", value, i, end, text))
            i = end
            continue
        if c.isalpha() or c == "_":
            m = _NAME_RE.match(src, i)
            text = m.group(0)
            if text in _KEYWORDS:
                toks.append(Token("op", _KEYWORDS[text], i, m.end(), text))
            else:
                toks.append(Token("name", text, i, m.end(), text))
            i = m.end()
            continue
        for op in _OPS:
            if src.startswith(op, i):
                toks.append(Token("op", op, i, i + len(op), op))
                i += len(op)
                break
        else:
            raise ExprError(f"unexpected character {c!r}", Loc(where, i))


# -------------------------------------------------------------------------------------------- parser
_INFIX_BP = {"||": 10, "&&": 20, "==": 30, "!=": 30, "<": 30, "<=": 30, ">": 30, ">=": 30, "=~": 30,
             "!~": 30, "in": 30, "not": 30, "|": 40, "^": 50, "&": 60}
_NOT_BP = 25  # binds looser than comparisons, tighter than && and ||
_CMP_BP = 30


class Parser:
    def __init__(self, src: str, where):
        self.src = src
        self.where = where
        self.toks = tokenize(src, where)
        self.i = 0

    def loc(self, tok: Token) -> Loc:
        return Loc(self.where, tok.start)

    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, expected: str, tok: Token | None = None):
        tok = tok or self.peek()
        got = tok.text if tok.kind != "eof" else "the end of the expression"
        raise ExprError(f"expected {expected}, got {got!r}" if tok.kind != "eof" else f"expected {expected}, got {got}",
                        self.loc(tok))

    def expect(self, op: str, expected: str | None = None) -> Token:
        tok = self.peek()
        if tok.kind == "op" and tok.value == op:
            return self.next()
        self.fail(expected or f"'{op}'")

    def parse(self) -> Node:
        if self.peek().kind == "eof":
            self.fail("an expression")
        node = self.expr(0)
        if self.peek().kind != "eof":
            self.fail("an operator such as &&, || or a comparison")
        return node

    def expr(self, min_bp: int) -> Node:
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind != "op" or tok.value not in _INFIX_BP:
                return left
            bp = _INFIX_BP[tok.value]
            if bp <= min_bp:
                return left
            self.next()
            if tok.value == "not":
                self.expect("in", "'in' after 'not'")
                op = "notin"
            else:
                op = tok.value
            if bp == _CMP_BP:
                right = self.list_or_value() if op in ("in", "notin") else self.expr(_CMP_BP)
                left = Compare(self.loc(tok), op, left, right)
                nxt = self.peek()
                if nxt.kind == "op" and _INFIX_BP.get(nxt.value) == _CMP_BP:
                    raise ExprError("comparisons cannot be chained: join them with && or ||", self.loc(nxt))
            else:
                # && and || are left-associative; bit operators too
                right = self.expr(bp)
                left = Binary(self.loc(tok), op, left, right)

    def list_or_value(self) -> Node:
        tok = self.peek()
        if tok.kind == "name" or (tok.kind == "op" and tok.value == "["):
            return self.prefix()
        self.fail("a list [..] or the name of a list")

    def prefix(self) -> Node:
        tok = self.next()
        at = self.loc(tok)
        if tok.kind == "op":
            if tok.value in ("!", "not"):
                return Unary(at, "!", self.expr(_NOT_BP))
            if tok.value == "^":
                return Unary(at, "^", self.expr(_INFIX_BP["&"]))
            if tok.value == "(":
                inner = self.expr(0)
                self.expect(")", "')' to close '('")
                return inner
            if tok.value == "[":
                items = []
                if self.peek().kind == "op" and self.peek().value == "]":
                    self.next()
                    return ListLit(at, items)
                while True:
                    item_tok = self.peek()
                    if item_tok.kind not in ("str", "num", "dur", "glob", "regex", "name") and not (
                            item_tok.kind == "op" and item_tok.value in ("true", "false")):
                        self.fail("a literal value in the list")
                    items.append(self.prefix())
                    sep = self.next()
                    if sep.kind == "op" and sep.value == "]":
                        return ListLit(at, items)
                    if not (sep.kind == "op" and sep.value == ","):
                        self.fail("',' or ']' in the list", sep)
            if tok.value in ("true", "false"):
                return Lit(at, tok.value == "true", "bool")
            self.fail("a field, a value, '(' or '!'", tok)
        if tok.kind == "num":
            return Lit(at, tok.value, "int")
        if tok.kind == "dur":
            return Lit(at, tok.value, "duration")
        if tok.kind == "str":
            return Lit(at, tok.value, "str")
        if tok.kind == "glob":
            return Lit(at, tok.value, "glob")
        if tok.kind == "regex":
            try:
                re.compile(tok.value)
            except re.error as e:
                raise ExprError(f"bad regular expression: {e}", Loc(self.where, tok.start + 2 + (e.pos or 0)))
            return Lit(at, tok.value, "regex")
        if tok.kind == "name":
            nxt = self.peek()
            if nxt.kind == "op" and nxt.value == "[" and nxt.start == tok.end:
                self.next()
                key = self.next()
                if key.kind != "str":
                    self.fail("a quoted key, as in k8s.labels[\"app\"]", key)
                self.expect("]", "']' after the key")
                return Name(at, tok.value, key.value)
            return Name(at, tok.value)
        self.fail("a field, a value, '(' or '!'", tok)


def parse(src: str, where) -> Node:
    """Parse one expression. `where(offset) -> (file, line, col)` places errors in their file."""
    return Parser(src, where).parse()
