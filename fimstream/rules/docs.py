"""docs/fields.md, generated from the field catalog and the constants (`fimstream rules docs`)."""
from __future__ import annotations

from . import fields as catalog
from .constants import GROUPS
from .fields import FAMILIES, FIELDS


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_fields_md() -> str:
    out = ["# Rule fields", "",
           "Generated from `fimstream/rules/fields.py` by `fimstream rules docs` - do not edit by hand.", "",
           "The rule-file format (rules, lists, macros, exceptions, correlations) and the operators are described "
           "in [rules.md](rules.md). A correlation's `same` fields are these names without the event type "
           "(`file.path` for `create.file.path` and `exec.file.path`).", "",
           "A field prefixed by an event type (`open.file.path`) only exists for that event type and makes the "
           "comparison select it. Fields without a prefix exist for every event. Array fields (marked []) "
           "match if any element matches.", "",
           "Types: path and bytes are raw kernel bytes (`*` in a path glob stops at `/`, `**` crosses it); "
           "str is text; ip compares with addresses and CIDR blocks; duration with 10s, 5m, 1h.", ""]
    common = [f for f in FIELDS.values() if f.event_types is None]
    out += ["## Every event", "", "| field | type | description |", "|---|---|---|"]
    for f in common:
        out.append(f"| `{f.name}` | {f.type}{'[]' if f.is_array else ''} | {_md(f.doc)} |")
    for fam, (ftype, doc, _) in FAMILIES.items():
        out.append(f"| `{fam}.<key>` or `{fam}[\"key\"]` | {ftype} | {_md(doc)} |")
    out.append("")
    for t in catalog.EVENT_TYPES:
        typed = [f for f in FIELDS.values() if f.event_types is not None and t in f.event_types]
        out += [f"## {t}", ""]
        if not typed:
            out += [f"No fields of its own: select it with `event.type == \"{t}\"`.", ""]
            continue
        out += ["| field | type | description |", "|---|---|---|"]
        for f in typed:
            out.append(f"| `{f.name}` | {f.type}{'[]' if f.is_array else ''} | {_md(f.doc)} |")
        out.append("")
    out += ["## Constants", ""]
    for group, consts in GROUPS.items():
        out.append(f"**{group}**: " + ", ".join(f"`{k}`={v:#o}" if group in ("open flags", "file mode bits")
                                                  else f"`{k}`={v:#x}" if group != "signals" else f"`{k}`={v}"
                                                  for k, v in consts.items()))
        out.append("")
    return "\n".join(out)
