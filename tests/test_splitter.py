"""The schema-generated splitter: same boundaries as encoding record by record, only CodecError on
corrupt input (never IndexError, never a wrong split that passes)."""
import random

import pytest

from fimstream.events import raw_event
from fimstream.schemas.codec import CodecError, Codecs


@pytest.fixture(scope="module")
def codecs():
    return Codecs()


def _events(seed=7, n=60):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = rnd.choice(["open", "rename", "exec", "connect", "setuid"])
        ev = raw_event(kind, bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 300))),
                       process={"cgroup": f"/kubepods/pod{i}/{'ab' * 32}".encode(),
                                "args": [b"x" * rnd.randrange(0, 200) for _ in range(rnd.randrange(0, 5))],
                                "ancestors": [{"pid": j, "comm": "sh", "exe": b"/bin/sh"} for j in range(rnd.randrange(0, 4))]},
                       attrs={f"k{j}": "v" * j for j in range(rnd.randrange(0, 3))})
        if kind == "rename":
            ev["target"] = {**ev["file"], "path": b"/new/" + bytes([i])}
        if kind == "connect":
            ev["file"] = None
            ev["net"] = {"family": 10, "protocol": 6, "local_addr": "::1", "local_port": 1, "remote_addr": "::2",
                         "remote_port": 443}
        if kind == "setuid":
            ev["cred"] = {k: rnd.randrange(-1, 70000) for k in ("old_uid", "old_euid", "old_gid", "old_egid", "new_uid",
                                                                "new_euid", "new_gid", "new_egid", "old_caps", "new_caps")}
        ev["retval"] = rnd.randrange(-(2 ** 40), 2 ** 40)
        out.append(ev)
    return out


def test_split_matches_record_encoding_and_extracts_fields(codecs):
    events = _events()
    payload = codecs.raw.encode_batch(events)
    spans = codecs.raw.split(payload, ("process.cgroup", "file.path", "target.path"))
    assert len(spans) == len(events)
    for ev, (body, cgroup, path, target) in zip(events, spans):
        assert body == codecs.raw.encode_record(ev)
        assert cgroup == ev["process"]["cgroup"]
        assert path == (ev["file"]["path"] if ev["file"] else None)
        assert target == (ev["target"]["path"] if ev["target"] else None)


def test_every_truncation_and_garbage_is_a_codec_error(codecs):
    payload = codecs.raw.encode_batch(_events(n=3))
    for cut in range(11, len(payload)):
        with pytest.raises(CodecError):
            codecs.raw.split(payload[:cut], ("process.cgroup",))
    rnd = random.Random(3)
    for _ in range(300):
        junk = codecs.raw.header + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400)))
        try:
            spans = codecs.raw.split(junk, ("process.cgroup",))
        except CodecError:
            continue
        assert b"".join(s[0] for s in spans) in junk  # a split that passed covers the payload exactly


def test_other_writer_schema_is_not_split(codecs):
    import copy

    from fimstream.schemas.codec import SchemaRegistry, canonical_json
    sources = copy.deepcopy(codecs.sources)
    sources["raw"]["fields"].append({"name": "extra", "type": "int", "default": 0})
    newer = Codecs(sources=sources)
    reader = Codecs(registry=SchemaRegistry(fetch={newer.raw.fingerprint: canonical_json(newer.raw.schema)}.get))
    payload = newer.raw.encode_batch([{**raw_event("open", "/x"), "extra": 1}])
    assert reader.raw.split(payload) is None  # the enricher then decodes and re-encodes
