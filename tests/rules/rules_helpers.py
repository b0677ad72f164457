"""Helpers for rule tests: compile a small rule set from text, build decoded events."""
from __future__ import annotations

import pytest

from fimstream.rules import RuleError, load_rules_text, make_event


def rules(text: str, name: str = "t.yaml"):
    return load_rules_text(text, name)


def one(expression: str, **rule):
    """A rule set with one rule `r` of this expression."""
    extra = "".join(f"\n    {k}: {v}" for k, v in rule.items())
    return rules(f"rules:\n  - id: r\n    expression: '{expression}'{extra}\n")


def hits(rs, **event) -> list[str]:
    return [r.id for r in rs.match(make_event(event))]


def problems(text: str) -> list[str]:
    with pytest.raises(RuleError) as err:
        rules(text)
    return [str(p) for p in err.value.problems]
