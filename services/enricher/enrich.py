"""Raw batch -> enriched batch, without re-encoding the raw part.

EnrichedEvent's fields are RawEvent's followed by Enrichment's, so an enriched record is the raw record's
bytes plus an encoded Enrichment suffix. The suffix depends only on the process's cgroup (container,
pod), so it is encoded once per cgroup and cached; the cache is dropped when metadata changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fimstream.schemas.codec import Codecs

# cgroup path (bytes, as the collector reports it) -> Enrichment record (dict per enrichment.avsc)
Resolver = Callable[[bytes], dict]


@dataclass
class EnrichStats:
    batches: int = 0
    events: int = 0
    reencoded: int = 0  # records from an older/newer raw writer: decoded and re-encoded, not spliced
    by_status: dict = field(default_factory=dict)


class BatchEnricher:
    def __init__(self, codecs: Codecs, resolve: Resolver, max_cached: int = 100_000):
        self.codecs = codecs
        self.resolve = resolve
        self.max_cached = max_cached
        self.stats = EnrichStats()
        self._suffix: dict[bytes, tuple[bytes, str]] = {}

    def invalidate(self) -> None:
        """Metadata changed (pod added, labels edited): re-resolve every cgroup on next sight."""
        self._suffix.clear()

    def _suffix_for(self, cgroup: bytes) -> tuple[bytes, str]:
        hit = self._suffix.get(cgroup)
        if hit is None:
            enrichment = self.resolve(cgroup)
            hit = (self.codecs.enrichment.encode_record(enrichment), enrichment["enrich_status"])
            if enrichment["enrich_status"] != "unresolved":  # unresolved may resolve soon: don't pin it
                if len(self._suffix) >= self.max_cached:
                    self._suffix.clear()
                self._suffix[cgroup] = hit
        return hit

    def enrich(self, payload: bytes) -> tuple[bytes, int]:
        """Returns (enriched batch payload, event count). Raises CodecError on a corrupt batch."""
        raw = self.codecs.raw
        bodies = []
        by_status = self.stats.by_status
        for record, body in raw.iter_with_bytes(payload):
            if body is None:
                body = raw.encode_record(record)
                self.stats.reencoded += 1
            suffix, status = self._suffix_for(record["process"]["cgroup"])
            by_status[status] = by_status.get(status, 0) + 1
            bodies.append(body + suffix)
        self.stats.batches += 1
        self.stats.events += len(bodies)
        return self.codecs.enriched.frame_encoded(bodies), len(bodies)
