"""Raw batch -> enriched batch, without re-encoding the raw part.

EnrichedEvent's fields are RawEvent's followed by Enrichment's, so an enriched record is the raw record's
bytes plus an encoded Enrichment suffix. The suffix depends only on the process's cgroup (container,
pod), so it is encoded once per cgroup and cached; the cache is dropped when metadata changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fimstream.schemas.codec import Codecs

# cgroup path (bytes, as the collector reports it) -> (Enrichment record per enrichment.avsc, pending)
Resolver = Callable[[bytes], tuple[dict, bool]]


class Pending(Exception):
    """The batch has events of a pod that is not visible yet: hold it and try again shortly."""


@dataclass
class EnrichStats:
    batches: int = 0
    events: int = 0
    reencoded: int = 0  # records from an older/newer raw writer: decoded and re-encoded, not spliced
    by_status: dict = field(default_factory=dict)


class BatchEnricher:
    def __init__(self, codecs: Codecs, resolve: Resolver, generation: Callable[[], int] = lambda: 0,
                 max_cached: int = 100_000):
        self.codecs = codecs
        self.resolve = resolve
        self.generation = generation
        self.max_cached = max_cached
        self.stats = EnrichStats()
        self._suffix: dict[bytes, tuple[bytes, str]] = {}
        self._seen_generation = generation()

    def _suffix_for(self, cgroup: bytes, final: bool) -> tuple[bytes, str]:
        hit = self._suffix.get(cgroup)
        if hit is None:
            enrichment, pending = self.resolve(cgroup)
            if pending and not final:
                raise Pending(cgroup)
            hit = (self.codecs.enrichment.encode_record(enrichment), enrichment["enrich_status"])
            if not pending:  # a pending answer may improve soon: don't pin it
                if len(self._suffix) >= self.max_cached:
                    self._suffix.clear()
                self._suffix[cgroup] = hit
        return hit

    def enrich(self, payload: bytes, final: bool = True) -> tuple[bytes, int]:
        """Returns (enriched batch payload, event count). Raises CodecError on a corrupt batch, and
        Pending when `final` is false and some event's pod is not visible yet."""
        gen = self.generation()
        if gen != self._seen_generation:  # metadata changed: re-resolve every cgroup on next sight
            self._suffix.clear()
            self._seen_generation = gen
        raw = self.codecs.raw
        spans = raw.split(payload, ("process.cgroup",))  # record bytes + cgroup, no decoding
        reencoded = 0
        if spans is None:  # an older/newer raw writer: decode into our schema, re-encode
            spans = [(raw.encode_record(r), r["process"]["cgroup"]) for r, _ in raw.iter_with_bytes(payload)]
            reencoded = len(spans)
        bodies = []
        statuses = []
        for body, cgroup in spans:
            suffix, status = self._suffix_for(cgroup, final)
            statuses.append(status)
            bodies.append(body + suffix)
        by_status = self.stats.by_status
        for status in statuses:  # counted once the batch is final, not at each held attempt
            by_status[status] = by_status.get(status, 0) + 1
        self.stats.reencoded += reencoded
        self.stats.batches += 1
        self.stats.events += len(bodies)
        return self.codecs.enriched.frame_encoded(bodies), len(bodies)
