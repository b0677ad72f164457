"""Avro codec for every fimstream topic: one framing, batches of records, schema evolution by fingerprint.

Wire format of one Kafka message value (all internal topics):

    C3 01 | 8-byte CRC-64-AVRO fingerprint of the writer's record schema (little endian) | Avro array of records

The two leading bytes and the fingerprint are Avro's "single object encoding" header; the body is an
array because per-message overhead dominates in Python (one event per message: ~2k events/s through
Faust; 100 per message: ~15-29k), so stages move batches. A reader resolves the writer schema from the
fingerprint (its own schemas, older versions under schemas/history/, or the schema topic) and reads it
into its own reader schema, so old readers read new writers and vice versa (Avro schema resolution).

EnrichedEvent is *composed*: RawEvent's fields followed by Enrichment's fields. Avro encodes a record
as the concatenation of its fields, so an enriched record is the raw record's bytes plus an encoded
Enrichment suffix: the enricher never re-encodes the raw part (see `iter_with_bytes`).
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import fastavro
from fastavro.schema import fingerprint as _fingerprint, to_parsing_canonical_form

from .codegen import SplitError, make_splitter

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_LEN = 10


class CodecError(ValueError):
    """A payload that cannot be decoded. The message says why; the payload goes to dead letters."""


# --------------------------------------------------------------------------------------------- schemas
def _load_json(name: str) -> dict:
    with open(SCHEMA_DIR / f"{name}.avsc", encoding="utf-8") as f:
        return json.load(f)


def enriched_schema_json(raw: dict | None = None, enrichment: dict | None = None) -> dict:
    """EnrichedEvent = RawEvent fields + Enrichment fields, in that order (the byte-append invariant)."""
    raw = raw or _load_json("raw_event")
    enrichment = enrichment or _load_json("enrichment")
    return {
        "type": "record",
        "name": "EnrichedEvent",
        "namespace": "fimstream",
        "doc": "RawEvent followed by the enricher's fields.",
        "fields": list(raw["fields"]) + list(enrichment["fields"]),
    }


def _inline(schema: dict, name: str, definition: dict) -> dict:
    """Replace the first reference to a named type by its definition, so every schema is self-contained
    (fingerprints and the schema topic need that)."""
    fields = []
    done = False
    for f in schema["fields"]:
        if not done and f["type"] == name:
            f = {**f, "type": definition}
            done = True
        fields.append(f)
    return {**schema, "fields": fields}


def _schema_sources() -> dict[str, dict]:
    raw = _load_json("raw_event")
    enriched = enriched_schema_json(raw)
    return {
        "raw": raw,
        "enrichment": _load_json("enrichment"),
        "enriched": enriched,
        "alert": _inline(_load_json("alert"), "fimstream.EnrichedEvent", enriched),
        "stats": _load_json("collector_stats"),
    }


def schema_fingerprint(parsed: dict | str) -> bytes:
    """8-byte CRC-64-AVRO fingerprint of a parsed schema (Avro spec, little-endian)."""
    canonical = parsed if isinstance(parsed, str) else to_parsing_canonical_form(parsed)
    return bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO"))


def canonical_json(parsed: dict) -> str:
    """Self-contained canonical form (named types inlined): what the schema topic stores."""
    return to_parsing_canonical_form(parsed)


# ----------------------------------------------------------------------------------- primitive encoders
def avro_long(n: int) -> bytes:
    """Zig-zag varint, as Avro encodes int and long. Used by hand-written fast encoders."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_bytes(b: bytes) -> bytes:
    return avro_long(len(b)) + b


def avro_string(s: str) -> bytes:
    return avro_bytes(s.encode("utf-8"))


def read_long(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode one zig-zag varint at pos; returns (value, new_pos)."""
    shift = 0
    acc = 0
    while True:
        if pos >= len(buf):
            raise CodecError("truncated varint")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise CodecError("varint longer than 10 bytes")
    return (acc >> 1) ^ -(acc & 1), pos


# ----------------------------------------------------------------------------------------- registry
class SchemaRegistry:
    """Writer schemas by fingerprint. Knows its own schemas and schemas/history/*.avsc; a `fetch`
    callback (the Kafka schema topic) is asked for fingerprints it has never seen."""

    def __init__(self, fetch: Callable[[bytes], str | None] | None = None):
        self._by_fp: dict[bytes, dict] = {}
        self.fetch = fetch
        hist = SCHEMA_DIR / "history"
        if hist.is_dir():
            for p in sorted(hist.glob("*.avsc")):
                self.add_json(p.read_text(encoding="utf-8"))

    def add(self, parsed: dict) -> bytes:
        fp = schema_fingerprint(parsed)
        self._by_fp.setdefault(fp, parsed)
        return fp

    def add_json(self, text: str) -> bytes:
        return self.add(fastavro.parse_schema(json.loads(text), _write_hint=False))

    def get(self, fp: bytes) -> dict:
        parsed = self._by_fp.get(fp)
        if parsed is None and self.fetch is not None:
            text = self.fetch(fp)
            if text is not None:
                self.add_json(text)
                parsed = self._by_fp.get(fp)
        if parsed is None:
            raise CodecError(f"unknown writer schema fingerprint {fp.hex()}")
        return parsed

    def known(self) -> Iterable[bytes]:
        return self._by_fp.keys()


# -------------------------------------------------------------------------------------------- codec
@dataclass
class Codec:
    """Encodes/decodes batches of one record type. Readers resolve older/newer writers by fingerprint."""

    name: str
    schema: dict  # parsed (fastavro) reader == writer schema of this build
    registry: SchemaRegistry
    fingerprint: bytes = field(init=False)
    _array: dict = field(init=False, repr=False)
    _splitters: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.fingerprint = self.registry.add(self.schema)
        self._array = {"type": "array", "items": self.schema}
        self.header = MAGIC + self.fingerprint

    # -- encoding
    def encode_batch(self, records: Iterable[dict]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self._array, list(records))
        return buf.getvalue()

    def encode_record(self, record: dict) -> bytes:
        """One record's Avro body, no framing (for byte-level assembly, see frame_encoded)."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def frame_encoded(self, bodies: list[bytes]) -> bytes:
        """Frame already-encoded record bodies (written with this codec's schema) as one batch."""
        if not bodies:
            return self.header + b"\x00"
        return b"".join((self.header, avro_long(len(bodies)), *bodies, b"\x00"))

    # -- decoding
    def writer_of(self, payload: bytes) -> tuple[bytes, dict]:
        if len(payload) < HEADER_LEN + 1:
            raise CodecError(f"payload of {len(payload)} bytes is shorter than the {HEADER_LEN + 1}-byte minimum")
        if payload[:2] != MAGIC:
            raise CodecError(f"bad magic {payload[:2].hex()} (expected c301): not a fimstream Avro batch")
        fp = bytes(payload[2:HEADER_LEN])
        return fp, (self.schema if fp == self.fingerprint else self.registry.get(fp))

    def decode_batch(self, payload: bytes) -> list[dict]:
        fp, writer = self.writer_of(payload)
        bio = io.BytesIO(payload)
        bio.seek(HEADER_LEN)
        try:
            if fp == self.fingerprint:
                records = fastavro.schemaless_reader(bio, self._array, None)
            else:
                records = fastavro.schemaless_reader(bio, {"type": "array", "items": writer}, self._array)
        except CodecError:
            raise
        except Exception as e:  # fastavro raises EOFError, ValueError, IndexError, UnicodeDecodeError...
            raise CodecError(f"corrupt {self.name} batch: {type(e).__name__}: {e}") from None
        if bio.tell() != len(payload):
            raise CodecError(f"corrupt {self.name} batch: {len(payload) - bio.tell()} trailing bytes")
        return records

    def split(self, payload: bytes, extract: tuple[str, ...] = ()) -> list[tuple] | None:
        """[(record bytes, *extracted field values), ...] without decoding the records (see codegen.py);
        None when the payload's writer schema is not ours (the caller decodes and re-encodes instead).
        Raises CodecError on a structurally corrupt payload."""
        fp, _ = self.writer_of(payload)
        if fp != self.fingerprint:
            return None
        split = self._splitters.get(extract)
        if split is None:
            split = self._splitters[extract] = make_splitter(self.schema, extract)
        try:
            spans, end = split(payload, HEADER_LEN)
        except (IndexError, SplitError) as e:
            raise CodecError(f"corrupt {self.name} batch: {type(e).__name__}: {e}") from None
        if end != len(payload):
            raise CodecError(f"corrupt {self.name} batch: {len(payload) - end} trailing bytes")
        return [(payload[start:stop], *rest) for start, stop, *rest in spans]

    def iter_with_bytes(self, payload: bytes) -> Iterator[tuple[dict, bytes | None]]:
        """Yield (record, its encoded bytes). The bytes are None when the writer schema differs from
        ours (the caller must re-encode instead of splicing). Raises CodecError on corrupt input."""
        fp, writer = self.writer_of(payload)
        same = fp == self.fingerprint
        mv = memoryview(payload)
        bio = io.BytesIO(payload)
        pos = HEADER_LEN
        try:
            while True:
                count, pos = read_long(mv, pos)
                if count == 0:
                    break
                if count < 0:  # block with byte size, allowed by the spec
                    count = -count
                    _, pos = read_long(mv, pos)
                for _ in range(count):
                    bio.seek(pos)
                    rec = fastavro.schemaless_reader(bio, writer, None if same else self.schema)
                    end = bio.tell()
                    yield rec, (payload[pos:end] if same else None)
                    pos = end
        except CodecError:
            raise
        except Exception as e:
            raise CodecError(f"corrupt {self.name} batch: {type(e).__name__}: {e}") from None
        if pos != len(payload):
            raise CodecError(f"corrupt {self.name} batch: {len(payload) - pos} trailing bytes")


class Codecs:
    """The codecs of one process, sharing one registry. `Codecs().raw.decode_batch(...)`."""

    def __init__(self, registry: SchemaRegistry | None = None, sources: dict[str, dict] | None = None):
        self.registry = registry or SchemaRegistry()
        self.sources = sources or _schema_sources()
        parsed = {name: fastavro.parse_schema(src, named_schemas={}, _write_hint=False)
                  for name, src in self.sources.items()}
        self.raw = Codec("raw", parsed["raw"], self.registry)
        self.enrichment = Codec("enrichment", parsed["enrichment"], self.registry)
        self.enriched = Codec("enriched", parsed["enriched"], self.registry)
        self.alert = Codec("alert", parsed["alert"], self.registry)
        self.stats = Codec("stats", parsed["stats"], self.registry)

    def all(self) -> list[Codec]:
        return [self.raw, self.enriched, self.alert, self.stats]


# ------------------------------------------------------------------------------------------ helpers
class EventIds:
    """Unique 16-byte ids without uuid4's cost: 8 random bytes per process + a 64-bit counter."""

    def __init__(self, prefix: bytes | None = None):
        self.prefix = prefix or os.urandom(8)
        self._seq = 0

    def next(self) -> bytes:
        self._seq += 1
        return self.prefix + self._seq.to_bytes(8, "big")


def id_hex(b: bytes) -> str:
    """EventId/AlertId in UUID text form (what ClickHouse's UUID type and SIEMs show)."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def text(b: bytes | str) -> str:
    """Display form of a raw path/arg: UTF-8, undecodable bytes as \\xNN (never raises, never hides)."""
    if isinstance(b, str):
        return b
    return b.decode("utf-8", "backslashreplace")


def jsonable(obj, key: str = ""):
    """JSON-ready copy of a decoded record: 16-byte ids as UUID text, other bytes as text (\\xNN escapes)."""
    if isinstance(obj, dict):
        return {k: jsonable(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v, key) for v in obj]
    if isinstance(obj, bytes):
        return id_hex(obj) if key.endswith(("_id", "_ids")) and len(obj) == 16 else text(obj)
    return obj
