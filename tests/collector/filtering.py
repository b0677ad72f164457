"""Helpers for the in-kernel filtering tests: rules loaded into the session collector (and unloaded after),
counter deltas, and the dict form of an Event that the rules and KernelPolicy.passes read."""
from __future__ import annotations

import copy

import pytest

from fimstream.collector.encoder import RawEncoder
from fimstream.collector.policy import event_view
from fimstream.events import _templates
from fimstream.rules import load_rules, load_rules_text
from fimstream.schemas.codec import Codecs

FILE_KINDS = ("open", "create", "write", "truncate", "unlink", "rmdir", "rename", "chmod", "chown", "link",
              "symlink", "mkdir", "mknod", "mount", "umount", "setxattr", "mmap", "memfd_create")


class Filtering:
    def __init__(self, collector):
        self.collector = collector
        self.ruleset = None
        self.codecs = Codecs()
        self.encoder = RawEncoder("test", collector.procs, collector.boot_offset_ns)

    def use(self, text_or_path) -> None:
        """Load rules (YAML text, or a path) into the kernel."""
        if isinstance(text_or_path, str) and "\n" in text_or_path:
            self.ruleset = load_rules_text(text_or_path)
        else:
            self.ruleset = load_rules(text_or_path)
        self.collector.load_rules(self.ruleset)

    def counters(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.collector.kernel_counters().items()}

    @staticmethod
    def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
        return {k: {c: after[k][c] - before[k][c] for c in after[k]} for k in after}

    def passes(self, ev) -> bool:
        return self.collector.filter.compiled.policy.passes(event_view(ev, self.collector.procs))

    def record(self, ev) -> dict:
        """The EnrichedEvent dict the detector would evaluate (encoded and decoded like on the wire)."""
        _, block = self.encoder.process_for(ev)
        raw = self.codecs.raw.decode_batch(self.codecs.raw.frame_encoded([self.encoder.encode(ev, block)]))[0]
        raw.update(copy.deepcopy(_templates()["enrichment"]))
        return raw

    def matches(self, ruleset, ev) -> list[str]:
        return [r.id for r in ruleset.match(self.record(ev))]


@pytest.fixture(scope="module")
def filtering(collector):
    """The session collector with rules in the kernel for this module; its symlinks scanned once (path
    strings are judged in the kernel only in a scanned mount namespace)."""
    f = Filtering(collector)
    collector.scan_symlinks()
    yield f
    collector.filter.unload()
