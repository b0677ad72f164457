"""Rule problems that name the file, line and column, and the error that carries all of them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    message: str
    rule_id: str | None = None  # the rule (or correlation) the problem belongs to
    what: str = "rule"  # rule | correlation

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.message}" + (f" ({self.what} {self.rule_id})" if self.rule_id else "")


class RuleError(Exception):
    """Loading or compiling rules failed. `problems` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid rules")


class ExprError(Exception):
    """One error inside an expression, at a character offset of its source. Converted to a Problem by
    whoever knows where the source sits in its file."""

    def __init__(self, message: str, at):
        super().__init__(message)
        self.message = message
        self.at = at  # Loc of the offending node/token


class Loc:
    """Where a node came from: a position function of its source (offset -> (file, line, col)) and an offset.
    Resolved lazily so a successful compile never pays for line/column arithmetic."""

    __slots__ = ("where", "offset")

    def __init__(self, where, offset: int):
        self.where = where
        self.offset = offset

    def resolve(self) -> tuple[str, int, int]:
        return self.where(self.offset)


def problem_at(loc: Loc | None, message: str, rule_id: str | None = None, default=("<rules>", 1, 1)) -> Problem:
    file, line, col = loc.resolve() if loc is not None else default
    return Problem(file, line, col, message, rule_id)
