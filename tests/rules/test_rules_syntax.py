"""Expression syntax: precedence, literals, and errors that point into the YAML file."""
from __future__ import annotations

import pytest

from fimstream.rules.errors import ExprError
from fimstream.rules.syntax import Binary, Compare, Lit, Unary, parse, tokenize
from rules_helpers import problems

W = lambda off: ("<expr>", 1, off + 1)  # noqa: E731


def test_bit_operators_bind_tighter_than_comparisons():
    node = parse("open.flags & O_CREAT > 0", W)
    assert isinstance(node, Compare) and node.op == ">"
    assert isinstance(node.left, Binary) and node.left.op == "&"


def test_not_binds_looser_than_comparison_and_tighter_than_and():
    node = parse('!a == 1 && b == 2', W)
    assert isinstance(node, Binary) and node.op == "&&"
    assert isinstance(node.left, Unary) and isinstance(node.left.operand, Compare)


def test_and_binds_tighter_than_or():
    node = parse("a == 1 || b == 2 && c == 3", W)
    assert node.op == "||" and node.right.op == "&&"


def test_keywords_and_not_in():
    node = parse('x not in ["a"] and not y == 1 or z == 2', W)
    assert node.op == "||" and node.left.op == "&&" and node.left.left.op == "notin"


@pytest.mark.parametrize("text,value,kind", [
    ("04000", 0o4000, "int"), ("0o755", 0o755, "int"), ("0x1F", 31, "int"), ("42", 42, "int"),
    ("10s", 10_000_000_000, "duration"), ("5m", 300_000_000_000, "duration"), ("100ms", 100_000_000, "duration"),
    ('"a\\xffb"', "a\udcffb", "str"), ('~"/etc/*"', "/etc/*", "glob"), ('r"^/etc/[a-z]+$"', "^/etc/[a-z]+$", "regex"),
])
def test_literals(text, value, kind):
    node = parse(f"x == {text}", W)
    assert isinstance(node.right, Lit) and node.right.value == value and node.right.kind == kind


@pytest.mark.parametrize("text,message,col", [
    ("open.file.path ==", "expected a field, a value", 18),
    ("a == 1 b == 2", "expected an operator", 8),
    ("a == 1 == 2", "cannot be chained", 8),
    ('a == "abc', "unterminated string", 6),
    ("a == 09", "bad octal", 6),
    ("a == 10x", "bad number", 6),
    ("(a == 1", "')' to close '('", 8),
    ("a in [1, 2", "',' or ']'", 11),
    ("a @ 1", "unexpected character", 3),
])
def test_syntax_errors_name_column_and_expectation(text, message, col):
    with pytest.raises(ExprError) as err:
        parse(text, W)
    assert message in err.value.message
    assert err.value.at.resolve() == ("<expr>", 1, col)


def test_error_inside_plain_yaml_scalar_points_into_the_file():
    text = "rules:\n  - id: a\n    expression: open.file.path == \"/x\" && bogus.field == 1\n"
    (p,) = problems(text)
    assert p.startswith("t.yaml:3:43: unknown name 'bogus.field'")


def test_error_inside_block_scalar_points_to_its_line():
    text = ("rules:\n  - id: a\n    expression: |\n      open.file.path == \"/x\"\n"
            "        && open.flags & O_CREAT > \"s\"\n")
    (p,) = problems(text)
    assert p.startswith("t.yaml:5:35:") and "expected an integer" in p


def test_error_inside_folded_scalar_and_quoted_scalar():
    text = ("rules:\n  - id: a\n    expression: >\n      open.file.path == \"/x\"\n      && nope\n"
            "  - id: b\n    expression: \"open.file.path == \\\"/y\\\" && nada\"\n")
    ps = problems(text)
    assert ps[0].startswith("t.yaml:5:10: unknown name 'nope'")
    assert ps[1].startswith("t.yaml:7:46: unknown name 'nada'")


def test_yaml_structure_errors_have_line_and_column():
    (p,) = problems("rules:\n  - id: a\n    expression: x: y\n")
    assert p.startswith("t.yaml:3:") and "YAML" in p
    (p,) = problems("rules:\n  - id: a\n    expression: [unclosed\n")
    assert p.startswith("t.yaml:4:") and "YAML" in p


def test_unknown_field_suggests_the_closest():
    (p,) = problems("rules:\n  - id: a\n    expression: open.file.pth == \"/x\"\n")
    assert "did you mean 'open.file.path'" in p


def test_tokenizer_keeps_label_keys_in_brackets():
    toks = tokenize('k8s.labels["app.kubernetes.io/name"] == "web"', W)
    assert [t.kind for t in toks][:4] == ["name", "op", "str", "op"]
