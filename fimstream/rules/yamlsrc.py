"""YAML with positions: PyYAML's node tree (line/column of every value) plus the map from a character of
a scalar's value back to its place in the file, so errors inside an expression point into the YAML file."""
from __future__ import annotations

import yaml

from .errors import Problem


class YamlProblem(Exception):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


class Source:
    """One rule file's text."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self._line_starts = None

    def line_col(self, index: int) -> tuple[int, int]:
        """1-based line and column of a character index."""
        if self._line_starts is None:
            starts = [0]
            for i, c in enumerate(self.text):
                if c == "\n":
                    starts.append(i + 1)
            self._line_starts = starts
        import bisect
        line = bisect.bisect_right(self._line_starts, index) - 1
        return line + 1, index - self._line_starts[line] + 1

    def compose(self):
        """The node tree, or YamlProblem naming where the YAML is broken."""
        try:
            return yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
            raise YamlProblem(Problem(self.name, line, col, f"YAML: {msg}")) from None
        except yaml.YAMLError as e:
            raise YamlProblem(Problem(self.name, 1, 1, f"YAML: {e}")) from None

    def node_where(self, node):
        """where(offset) for a node as a whole: always its start."""
        pos = (self.name, node.start_mark.line + 1, node.start_mark.column + 1)
        return lambda _offset: pos

    def scalar_where(self, node):
        """where(offset) mapping a character of the scalar's *value* to file line/column. Works for plain,
        quoted (escapes shift nothing visible) and block (| and >) scalars by aligning the value's
        characters with the source text in order (folded line breaks match any whitespace run)."""
        start, end = node.start_mark.index, node.end_mark.index
        seg = self.text[start:end]
        value = node.value
        j = 0
        if node.style in ('"', "'"):
            j = 1
        elif node.style in ("|", ">"):
            nl = seg.find("\n")
            j = nl + 1 if nl >= 0 else len(seg)
        positions = []
        n = len(seg)
        for c in value:
            if c.isspace():
                positions.append(j)
                if j < n and seg[j].isspace():
                    j += 1
            else:
                while j < n and seg[j] != c:
                    j += 1
                positions.append(j)
                j += 1
        positions.append(j)  # one past the end (errors "at the end of the expression")

        def where(offset: int):
            k = positions[min(max(offset, 0), len(positions) - 1)]
            return (self.name, *self.line_col(start + min(k, max(n - 1, 0))))
        return where


def mapping_items(node):
    """(key string, key node, value node) of a mapping node."""
    return [(k.value, k, v) for k, v in node.value]


def to_python(node):
    """Plain Python data of a node (for simple values: tags, lists of strings...)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
