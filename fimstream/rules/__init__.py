"""fimstream's rule language: SECL-style expressions over decoded EnrichedEvent dicts, compiled once into
per-event-type Python functions, plus the kernel filter (approvers/discarders) derived from the same rules.

    from fimstream.rules import load_rules, RuleSetHolder
    rules = load_rules("rules/")                  # RuleSet, or RuleError listing file:line:col problems
    for rule in rules.match(event): ...           # enabled rules the event matches, file order
    policy = rules.kernel_policy()                # KernelPolicy for the collector's eBPF maps
    rules.can_discard("open", directory=b"/tmp")  # may the kernel drop open events under /tmp?
    rules.correlations                            # Correlation definitions (sequence/threshold/score) of
                                                  # the same files; the detector's engine runs them
The rule-file format: docs/rules.md.
"""
from .approvers import Approver, KernelPolicy, TypePolicy, can_discard, kernel_dev, kernel_policy
from .errors import Problem, RuleError
from .fields import EVENT_TYPES, FIELDS, Field, lookup
from .fixtures import make_event, run_fixtures
from .reload import ReloadResult, RuleSetHolder
from .ruleset import ACTIONS, SEVERITIES, Rule, RuleSet, load_rules, load_rules_text
from .correlations import ENTITY_KEYS, Correlation  # after .ruleset, which it imports

__all__ = [
    "ACTIONS", "Approver", "Correlation", "ENTITY_KEYS", "EVENT_TYPES", "FIELDS", "Field", "KernelPolicy",
    "Problem", "ReloadResult", "Rule", "RuleError", "RuleSet", "RuleSetHolder", "SEVERITIES", "TypePolicy", "can_discard", "kernel_dev",
    "kernel_policy", "load_rules", "load_rules_text", "lookup", "make_event", "run_fixtures",
]
