import copy
import io
import json

import fastavro
import pytest

from fimstream.events import enriched_event, raw_event
from fimstream.schemas.codec import (MAGIC, CodecError, Codecs, SchemaRegistry, avro_long, canonical_json,
                                     jsonable, read_long, schema_fingerprint)


@pytest.fixture(scope="module")
def codecs():
    return Codecs()


def test_raw_batch_roundtrip_keeps_bytes_exactly(codecs):
    weird = b"/tmp/\xff\xfe-not-utf8\nnewline"
    long_path = b"/" + b"a" * 4095
    events = [raw_event("open", weird), raw_event("unlink", long_path), raw_event("exec", "/usr/bin/id")]
    payload = codecs.raw.encode_batch(events)
    assert payload[:2] == MAGIC and payload[2:10] == codecs.raw.fingerprint
    back = codecs.raw.decode_batch(payload)
    assert [e["file"]["path"] for e in back] == [weird, long_path, b"/usr/bin/id"]
    assert back == events


def test_enriched_is_raw_bytes_plus_suffix(codecs):
    raw = raw_event("write", "/etc/hosts")
    enrichment = {"container_id": "c0ffee", "container_runtime": "containerd", "enrich_status": "container",
                  "k8s": {"namespace": "prod", "pod": "web-1", "pod_uid": "", "labels": {"app": "web"},
                          "annotations": {}, "container_name": "", "image": "", "node": "", "workload_kind": "",
                          "workload_name": "", "service_account": ""}}
    spliced = codecs.raw.encode_record(raw) + codecs.enrichment.encode_record(enrichment)
    assert spliced == codecs.enriched.encode_record({**raw, **enrichment})
    [(rec, body)] = list(codecs.raw.iter_with_bytes(codecs.raw.encode_batch([raw])))
    assert rec == raw and body == codecs.raw.encode_record(raw)
    assert codecs.enriched.decode_batch(codecs.enriched.frame_encoded([spliced]))[0]["k8s"]["pod"] == "web-1"


def test_alert_embeds_enriched_event(codecs):
    ev = enriched_event("chmod", "/usr/bin/passwd", mode=0o4755)
    alert = {"alert_id": b"\x01" * 16, "time_ns": 1, "rule_id": "setuid_bit", "severity": "high", "message": "m",
             "tags": ["T1548.001"], "actions": ["alert"], "score": 1.0, "event": ev, "related_event_ids": [b"\x02" * 16]}
    back = codecs.alert.decode_batch(codecs.alert.encode_batch([alert]))[0]
    assert back["event"]["file"]["path"] == b"/usr/bin/passwd"
    j = jsonable(back)
    assert j["alert_id"] == "01010101-0101-0101-0101-010101010101"
    json.dumps(j)


def _evolved_sources(codecs, extra_field):
    sources = copy.deepcopy(codecs.sources)
    sources["raw"]["fields"].append(extra_field)
    return sources


def test_old_reader_reads_new_writer_through_registry(codecs):
    """A v2 writer adds a field; a v1 reader that learns the v2 schema (schema topic) reads its data."""
    new_field = {"name": "severity_hint", "type": "int", "default": 0}
    v2 = Codecs(sources=_evolved_sources(codecs, new_field))
    ev = raw_event("open", "/etc/shadow")
    payload = v2.raw.encode_batch([{**ev, "severity_hint": 7}])
    published = {v2.raw.fingerprint: canonical_json(v2.raw.schema)}  # what the schema topic holds
    v1 = Codecs(registry=SchemaRegistry(fetch=published.get))
    assert v1.raw.fingerprint != v2.raw.fingerprint
    [back] = v1.raw.decode_batch(payload)
    assert back == ev  # the unknown field is skipped, everything else intact
    # and record-by-record decoding refuses to hand out bytes it cannot splice
    [(rec, body)] = list(v1.raw.iter_with_bytes(payload))
    assert rec == ev and body is None


def test_new_reader_reads_old_writer_with_defaults(codecs):
    new_field = {"name": "severity_hint", "type": "int", "default": 3}
    published = {codecs.raw.fingerprint: canonical_json(codecs.raw.schema)}  # the old writer registered it
    v2 = Codecs(registry=SchemaRegistry(fetch=published.get), sources=_evolved_sources(codecs, new_field))
    payload = codecs.raw.encode_batch([raw_event("open", "/x")])
    [back] = v2.raw.decode_batch(payload)
    assert back["severity_hint"] == 3


@pytest.mark.parametrize("payload, reason", [
    (b"", "shorter"),
    (b"{\"json\": true, \"not\": \"avro\"}", "bad magic"),
    (MAGIC + b"\x00" * 8 + b"\x02\x00", "unknown writer schema"),
])
def test_corrupt_payloads_raise_codec_error(codecs, payload, reason):
    with pytest.raises(CodecError, match=reason):
        codecs.raw.decode_batch(payload)


def test_truncated_and_trailing_garbage(codecs):
    good = codecs.raw.encode_batch([raw_event("open", "/etc/passwd")] * 2)
    for bad in (good[:-7], good[:len(good) // 2], good + b"\x00junk"):
        with pytest.raises(CodecError):
            codecs.raw.decode_batch(bad)
        with pytest.raises(CodecError):
            list(codecs.raw.iter_with_bytes(bad))


def test_varint_matches_fastavro():
    import io
    for n in (0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert avro_long(n) == buf.getvalue()
        assert read_long(buf.getvalue(), 0) == (n, len(buf.getvalue()))


def test_fingerprint_is_stable_over_doc_changes(codecs):
    sources = copy.deepcopy(codecs.sources)
    sources["raw"]["doc"] = "changed documentation"
    assert Codecs(sources=sources).raw.fingerprint == codecs.raw.fingerprint
    assert len(schema_fingerprint(codecs.raw.schema)) == 8


def test_history_schemas_let_this_build_read_what_earlier_builds_wrote(codecs):
    """schemas/history/ holds the earlier versions of the schemas (here: RawEvent before File.mtime_ns and
    ctime_ns): a batch written with one decodes with the current reader, new fields at their defaults,
    without any schema topic."""
    from fimstream.schemas.codec import SCHEMA_DIR

    [old_text] = [p.read_text() for p in (SCHEMA_DIR / "history").glob("raw_event.8ba626cfae683c8f.avsc")]
    old = fastavro.parse_schema(json.loads(old_text), _write_hint=False)
    ev = raw_event("exec", "/tmp/x")
    old_ev = {**ev, "file": {k: v for k, v in ev["file"].items() if k not in ("mtime_ns", "ctime_ns")}}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, {"type": "array", "items": old}, [old_ev])
    payload = MAGIC + schema_fingerprint(old) + body.getvalue()
    [back] = Codecs().raw.decode_batch(payload)
    assert back == ev and back["file"]["ctime_ns"] == 0
    known = set(codecs.raw.registry.known())  # the enriched and alert versions of that time too
    assert {bytes.fromhex(fp) for fp in ("8ba626cfae683c8f", "bd2eb4b03f11bcc3", "0a345aae857ecde4")} <= known
