"""Hot reload: file changes swap the rule set atomically; bad files keep the old one; control messages."""
from __future__ import annotations

import os
import time

import pytest

from fimstream.rules import RuleError, RuleSetHolder, make_event

GOOD = 'rules:\n  - id: a\n    expression: open.file.path == "/x"\n'
OTHER = 'rules:\n  - id: b\n    expression: open.file.path == "/y"\n'
BAD = 'rules:\n  - id: c\n    expression: open.file.path == \n'


def ids(holder, path):
    return [r.id for r in holder.current.match(make_event({"event_type": "open", "file": path}))]


def touch_later(path, text):
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a distinct mtime even on coarse clocks


def test_first_load_must_succeed(tmp_path):
    (tmp_path / "r.yaml").write_text(BAD)
    with pytest.raises(RuleError):
        RuleSetHolder(tmp_path)


def test_file_change_swaps_and_bad_file_keeps_the_old_set(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD)
    changes, errors = [], []
    holder = RuleSetHolder(tmp_path, on_change=changes.append, on_error=errors.append)
    assert holder.check() is None  # nothing changed
    touch_later(f, OTHER)
    result = holder.check()
    assert result.ok and result.changed and ids(holder, "/y") == ["b"] and changes == [holder.current]
    old = holder.current
    touch_later(f, BAD)
    result = holder.check()
    assert not result.ok and holder.current is old and ids(holder, "/y") == ["b"]
    assert "r.yaml:3:" in str(result.error) and holder.last_error is result.error and errors == [result.error]
    (tmp_path / "more.yaml").write_text(GOOD)  # an added file is noticed too
    touch_later(f, OTHER)
    assert holder.check().ok and sorted(r.id for r in holder.current.rules) == ["a", "b"]


def test_polling_thread_reloads(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD)
    with RuleSetHolder(f, poll_interval=0.05) as holder:
        touch_later(f, OTHER)
        deadline = time.monotonic() + 5
        while ids(holder, "/y") != ["b"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ids(holder, "/y") == ["b"]


def test_control_message_overlay_and_path(tmp_path):
    (tmp_path / "r.yaml").write_text(GOOD)
    holder = RuleSetHolder(tmp_path)
    exc = b'exceptions:\n  - rule: a\n    when: {process.file.name: [cat]}\n'
    assert holder.apply_control(exc).ok
    ev = {"event_type": "open", "file": "/x", "process": {"exe": "/usr/bin/cat"}}
    assert [r.id for r in holder.current.match(make_event(ev))] == []
    bad = holder.apply_control(b"exceptions:\n  - rule: missing\n    when: {process.uid: [0]}\n")
    assert not bad.ok and "<control>:2:" in str(bad.error)
    assert [r.id for r in holder.current.match(make_event(ev))] == []  # the previous overlay stays in force
    assert holder.apply_control(b"").ok  # an empty message removes the overlay
    assert [r.id for r in holder.current.match(make_event(ev))] == ["a"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.yaml").write_text(OTHER)
    assert holder.apply_control(str(other).encode()).ok and ids(holder, "/y") == ["b"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(BAD)
    assert not holder.apply_control(str(broken)).ok and ids(holder, "/y") == ["b"]
