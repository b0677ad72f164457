"""Stateful detection over rule matches: sequences, thresholds and risk scores, per entity.

The definitions (Correlation) belong to the rule language: they are written in rule files and compiled
with the rule set (fimstream.rules.correlations, `RuleSet.correlations`). This module is the engine.
Input is the stream of (rule match, event) the stateless rules produce; output is extra alerts. Events of
one container (or host) share a Kafka partition, so one detector worker sees an entity's events in order
and its state is local to the partitions it owns. Windows use event time (replays give the same
answers). Memory is bounded: expired state is swept and at most `max_keys` entities are tracked per
correlation (least recently seen dropped first, counted in `evicted`).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable

from fimstream.rules.correlations import ENTITY_KEYS, Correlation

__all__ = ["ENTITY_KEYS", "Correlation", "CorrelationStats", "Correlator", "Fired"]


@dataclass
class Fired:
    correlation: Correlation
    event: dict  # the event that completed it
    related: list[bytes]  # event ids of the earlier events
    score: float = 0.0


@dataclass
class _Progress:
    step: int
    started: int
    ids: list[bytes]


class _Bounded(OrderedDict):
    def __init__(self, max_keys: int):
        super().__init__()
        self.max_keys = max_keys
        self.evicted = 0

    def touch(self, key, factory):
        value = self.get(key)
        if value is None:
            value = self[key] = factory()
            if len(self) > self.max_keys:
                self.popitem(last=False)
                self.evicted += 1
        else:
            self.move_to_end(key)
        return value


@dataclass
class CorrelationStats:
    fired: int = 0
    evicted: int = 0
    tracked: int = 0


class Correlator:
    """Runs the enabled correlations given. `previous`: a Correlator whose state is carried over for every
    correlation with the same id and the same non-empty `state_version` (a rule reload that leaves a
    correlation's kind, steps, `same` and `by` alone keeps its partial sequences, counts and scores);
    the others start empty. Kept state objects are shared with `previous`, so feed one of the two at a time
    (the detector swaps them between batches, on the thread that evaluates)."""

    def __init__(self, correlations: Iterable[Correlation], max_keys: int = 100_000,
                 previous: "Correlator | None" = None):
        self.correlations = [c for c in correlations if c.enabled]
        self.max_keys = max_keys
        self._state = {c.id: _Bounded(max_keys) for c in self.correlations}
        self.kept_state: list[str] = []  # ids whose state came from `previous`
        if previous is not None:
            old = {c.id: c.state_version for c in previous.correlations}
            for c in self.correlations:
                if c.state_version and old.get(c.id) == c.state_version:
                    self._state[c.id] = previous._state[c.id]
                    self.kept_state.append(c.id)
        self._by_rule: dict[str, list[Correlation]] = {}
        self._scored = [c for c in self.correlations if c.kind == "score"]
        for c in self.correlations:
            for rule_id in c.rule_ids:  # once per rule even if it is several steps of the sequence
                self._by_rule.setdefault(rule_id, []).append(c)
        self.stats = previous.stats if previous is not None else CorrelationStats()

    def observe(self, event: dict, rule_id: str, score: float = 0.0) -> list[Fired]:
        """Feed one rule match; returns the correlations it completes."""
        fired = []
        now = event["time_ns"]
        for c in self._by_rule.get(rule_id, ()):
            hit = (self._sequence if c.kind == "sequence" else self._threshold)(c, event, rule_id, now)
            if hit:
                fired.append(hit)
        if score:
            for c in self._scored:
                hit = self._score(c, event, score, now)
                if hit:
                    fired.append(hit)
        self.stats.fired += len(fired)
        return fired

    # A sequence advances per entity (and per `same` values): step i is accepted only after step i-1,
    # all within the window of the first step. A step may accept any of several rules.
    def _sequence(self, c: Correlation, event: dict, rule_id: str, now: int) -> Fired | None:
        key = c.key(event) + tuple(read(event) for read in c.same)
        steps = c.step_sets
        state: _Bounded = self._state[c.id]
        progress: _Progress | None = state.get(key)
        if progress is not None and now - progress.started > c.window_ns:
            del state[key]
            progress = None
        if progress is None:
            if rule_id in steps[0]:
                state.touch(key, lambda: _Progress(1, now, [event["event_id"]]))
                if len(steps) == 1:
                    del state[key]
                    return Fired(c, event, [])
            return None
        if rule_id not in steps[progress.step]:
            if rule_id in steps[0]:  # a fresh start resets the window
                progress.step, progress.started, progress.ids = 1, now, [event["event_id"]]
            return None
        progress.step += 1
        if progress.step == len(steps):
            del state[key]
            return Fired(c, event, progress.ids)
        progress.ids.append(event["event_id"])
        return None

    def _threshold(self, c: Correlation, event: dict, rule_id: str, now: int) -> Fired | None:
        window: deque = self._state[c.id].touch(c.key(event), deque)
        window.append((now, event["event_id"]))
        while window and now - window[0][0] > c.window_ns:
            window.popleft()
        if len(window) >= c.count:
            related = [eid for _, eid in list(window)[:-1]]
            window.clear()  # re-arm: the next alert needs `count` new matches
            return Fired(c, event, related)
        return None

    def _score(self, c: Correlation, event: dict, score: float, now: int) -> Fired | None:
        window: deque = self._state[c.id].touch(c.key(event), deque)
        window.append((now, score, event["event_id"]))
        while window and now - window[0][0] > c.window_ns:
            window.popleft()
        total = sum(s for _, s, _ in window)
        if total >= c.min_score:
            related = [eid for _, _, eid in list(window)[:-1]]
            window.clear()
            return Fired(c, event, related, total)
        return None

    def sweep(self, now_ns: int) -> None:
        """Drop state whose window has passed (call now and then; bounded work per entity)."""
        for c in self.correlations:
            state = self._state[c.id]
            for key in [k for k, v in state.items() if _expired(v, now_ns, c.window_ns)]:
                del state[key]
        self.stats.tracked = sum(len(s) for s in self._state.values())
        self.stats.evicted = sum(s.evicted for s in self._state.values())


def _expired(value, now: int, window: int) -> bool:
    if isinstance(value, _Progress):
        return now - value.started > window
    return not value or now - value[-1][0] > window
