"""Every enabled rule and correlation of the default pack has a live test that makes it fire and one where a
benign look-alike stays quiet, or is in SKIP with the reason it cannot be triggered on this machine. A rule
added to rules/ without live tests fails here."""
from __future__ import annotations

import importlib
import pkgutil

from fimstream.rules import load_rules

from . import harness
from .harness import RULES_DIR

# rule id -> why no real action on this machine can trigger it (empty: every rule is triggered live)
SKIP: dict[str, str] = {}


def _registered():
    package = __name__.rpartition(".")[0]
    for mod in pkgutil.iter_modules(harness.__spec__.submodule_search_locations or [harness.__file__.rpartition("/")[0]]):
        if mod.name.startswith("test_"):
            importlib.import_module(f"{package}.{mod.name}")  # their @fires/@quiet fill the registry
    return harness.FIRES, harness.QUIET


def test_every_rule_and_correlation_has_live_tests():
    pack = load_rules(RULES_DIR)
    ids = {r.id for r in pack.enabled_rules} | {c.id for c in pack.enabled_correlations}
    fires, quiet = _registered()
    assert not set(SKIP) - ids, f"skip entries for rules that do not exist: {set(SKIP) - ids}"
    assert all(reason.strip() for reason in SKIP.values()), "every skip needs its reason"
    missing = {i: [k for k, table in (("fires", fires), ("quiet", quiet)) if i not in table]
               for i in sorted(ids - set(SKIP))}
    missing = {i: kinds for i, kinds in missing.items() if kinds}
    assert not missing, f"rules without live tests (rule: missing kinds): {missing}"
    unknown = (set(fires) | set(quiet)) - ids
    assert not unknown, f"live tests registered for unknown rules: {unknown}"
