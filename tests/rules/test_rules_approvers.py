"""Kernel policy (approvers) and discarders: examples, inode resolution, and soundness properties."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fimstream.events import enriched_event, file_record
from fimstream.rules import RuleError, load_rules_text
from fimstream.rules.approvers import kernel_dev
from rules_helpers import one, rules

W = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC


def test_modes_per_type():
    rs = rules('rules:\n  - id: a\n    expression: open.file.path =~ "/etc/**" && open.flags & (O_WRONLY|O_RDWR|O_CREAT|O_TRUNC) > 0\n'
               '  - id: b\n    expression: chmod.file.destination.mode & S_ISUID > 0\n'
               '  - id: c\n    expression: unlink.file.path == "/x" || unlink.file.path =~ r"^/y"\n')
    p = rs.kernel_policy(resolve_inodes=False)
    assert p.types["open"].mode == "filter"
    assert p.types["open"].prefixes == {"file": {b"/etc/": W}}
    assert p.types["chmod"].mode == "filter" and p.types["chmod"].mode_bits == 0o4000
    assert p.types["unlink"].mode == "pass" and p.types["unlink"].reasons == ("c",)
    assert p.types["exec"].mode == "drop"


def test_and_picks_the_most_selective_side_and_or_needs_both():
    rs = one('open.file.path =~ "/etc/**" && open.file.name in ["shadow", "gshadow"] && process.uid != 0')
    tp = rs.kernel_policy(resolve_inodes=False).types["open"]
    assert tp.names == {"file": {b"shadow": 0, b"gshadow": 0}} and not tp.prefixes
    rs = one('open.file.path == "/a" || process.file.path in ["/usr/bin/nc"]')
    tp = rs.kernel_policy(resolve_inodes=False).types["open"]
    assert tp.paths == {"file": {b"/a": 0}} and tp.exes == {b"/usr/bin/nc": 0}


def test_globs_give_names_or_prefixes_and_bare_wildcards_give_nothing():
    tp = one('open.file.path =~ "/home/*/.bashrc"').kernel_policy(resolve_inodes=False).types["open"]
    assert tp.names == {"file": {b".bashrc": 0}}
    tp = one('exec.file.path =~ "/memfd:*"').kernel_policy(resolve_inodes=False).types["exec"]
    assert tp.prefixes == {"file": {b"/memfd:": 0}}
    assert one('open.file.path =~ "/*.so"').kernel_policy(resolve_inodes=False).types["open"].mode == "pass"


def test_rename_destination_uses_the_target_slot():
    tp = one('rename.file.destination.path =~ "/etc/**"').kernel_policy(resolve_inodes=False).types["rename"]
    assert tp.prefixes == {"target": {b"/etc/": 0}}
    assert tp.passes(enriched_event("rename", "/tmp/a", target=file_record("/etc/b")))
    assert not tp.passes(enriched_event("rename", "/etc/b", target=file_record("/tmp/a")))


def test_exact_paths_resolve_to_inodes_so_hard_links_match(tmp_path):
    real = tmp_path / "secret"
    real.write_text("x")
    alias = tmp_path / "alias"
    os.link(real, alias)
    rs = one(f'open.file.path == "{real}"')
    p = rs.kernel_policy()
    st = os.stat(real)
    assert p.types["open"].inodes == {"file": {(st.st_dev, st.st_ino): 0}}
    via_link = enriched_event("open", str(alias))
    via_link["file"].update(dev=st.st_dev, ino=st.st_ino)
    assert p.passes(via_link)
    other = enriched_event("open", str(tmp_path / "other"))
    assert not p.passes(other)
    missing = one('open.file.path == "/nonexistent/fimstream"').kernel_policy()
    assert missing.unresolved == (b"/nonexistent/fimstream",)
    assert kernel_dev(os.makedev(8, 1)) == (8 << 20) | 1


def test_policy_to_dict_is_json_ready():
    import json
    d = one('open.file.path in ["/etc/shadow", "/etc/caf\\xe9"]').kernel_policy(resolve_inodes=False).to_dict()
    assert json.loads(json.dumps(d))["types"]["open"]["paths"]["file"] == {"/etc/shadow": 0, "/etc/caf\\xe9": 0}


def test_discarders_examples():
    rs = rules('rules:\n  - id: a\n    expression: open.file.path =~ "/etc/*" && process.uid != 0\n'
               '  - id: b\n    expression: open.file.path =~ "/home/*/.ssh/**" || open.file.name == "id_rsa"\n'
               '  - id: c\n    expression: unlink.file.path !~ "/tmp/**"\n')
    assert not rs.can_discard("open", directory="/tmp")  # rule b: id_rsa may be anywhere
    rs2 = rules('rules:\n  - id: a\n    expression: open.file.path =~ "/etc/*" && process.uid != 0\n')
    assert rs2.can_discard("open", directory=b"/tmp")
    assert rs2.can_discard("open", directory=b"/etc/ssh")  # /etc/* does not reach /etc/ssh/x
    assert not rs2.can_discard("open", directory=b"/etc")
    assert not rs2.can_discard("open", directory=b"/")
    assert rs2.can_discard("open", path=b"/etc/ssh/sshd_config")
    assert not rs2.can_discard("open", path=b"/etc/passwd")
    assert rs.can_discard("unlink", directory="/tmp") and not rs.can_discard("unlink", directory="/var")
    assert rs.can_discard("chmod", directory="/etc")  # no chmod rule at all


# ------------------------------------------------------------------------------------- properties
SEGMENTS = ["etc", "tmp", "a", "b", "shadow", ".ssh", "x\\xff", "cron.d"]
TYPES = ["open", "unlink", "rename", "chmod", "exec"]


def _raw(seg: str) -> bytes:
    return seg.encode().replace(b"\\xff", b"\xff")


paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs))
# globs usually start with a literal directory (so they yield prefix/name approvers), then mix literals
# and wildcards; sometimes they start with a wildcard (no approver: the type must pass everything)
globs = st.tuples(st.sampled_from(["etc", "tmp", "a", "*", "**"]),
                  st.lists(st.sampled_from(SEGMENTS + ["*", "**", "s*", "*d", "*.d"]), min_size=0, max_size=2),
                  st.sampled_from(["*", "**", "s*", "*d", "shadow", "x\\xff", None])).map(
    lambda t: "/" + "/".join([t[0], *t[1]] + ([t[2]] if t[2] else [])))


@st.composite
def atoms(draw, only_approvable=False):
    """One comparison. Two thirds are kernel-approvable, so that filtered types (not only `pass`) occur."""
    t = draw(st.sampled_from(TYPES))
    pfield = draw(st.sampled_from([f"{t}.file.path"] + (["rename.file.destination.path"] if t == "rename" else [])))
    kind = draw(st.integers(0, 11 if only_approvable else 17))
    approvable = [
        lambda: f'{pfield} == "{draw(paths)}"',
        lambda: f'{pfield} in ["{draw(paths)}", "{draw(paths)}", ~"{draw(globs)}"]',
        lambda: f'{pfield} =~ "{draw(globs)}"',
        lambda: f'{pfield} =~ "{draw(globs)}"',
        lambda: f'{pfield} =~ "{draw(globs)}"',
        lambda: f'{t}.file.name == "{draw(st.sampled_from(SEGMENTS))}"',
        lambda: f'process.file.path == "/usr/bin/{draw(st.sampled_from(["nc", "bash"]))}"',
        lambda: f"open.flags & {draw(st.sampled_from(['O_CREAT', 'O_WRONLY|O_TRUNC', 'O_RDWR']))} > 0",
        lambda: "chmod.file.destination.mode & S_ISUID > 0",
        lambda: f'open.flags == {draw(st.sampled_from(["O_CREAT", "0", "O_WRONLY"]))}',
        lambda: f'event.type == "{t}"',
        lambda: f'{pfield} =~ "{draw(globs)}" && open.flags & O_WRONLY > 0',
    ]
    other = [
        lambda: f'{pfield} !~ "{draw(globs)}"',
        lambda: f'{pfield} != "{draw(paths)}"',
        lambda: f'process.comm == "{draw(st.sampled_from(["nc", "bash"]))}"',
        lambda: f'{pfield} =~ r"^/{draw(st.sampled_from(SEGMENTS))}"',
        lambda: "process.uid == 0",
        lambda: f'{pfield} not in ["{draw(paths)}", ~"{draw(globs)}"]',
    ]
    return (approvable + other)[kind]()


def exprs():
    return st.recursive(atoms(), lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) && ({ab[1]})"),
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) || ({ab[1]})"),
        inner.map(lambda a: f"!({a})")), max_leaves=5)


def approvable_exprs():
    """Rules the kernel can filter: approvable comparisons under && and ||, and `&& !x` exceptions."""
    return st.recursive(atoms(only_approvable=True), lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) && ({ab[1]})"),
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) || ({ab[1]})"),
        st.tuples(inner, exprs()).map(lambda ab: f"({ab[0]}) && !({ab[1]})")), max_leaves=4)


def rule_set(expressions: list[str]):
    text = "rules:\n" + "".join(f"  - id: r{i}\n    expression: '{e}'\n" for i, e in enumerate(expressions))
    try:
        return load_rules_text(text)
    except RuleError:
        assume(False)


@st.composite
def events(draw):
    t = draw(st.sampled_from(TYPES))
    ev = enriched_event(t, _raw(draw(paths)))
    if t == "rename":
        ev["target"] = file_record(_raw(draw(paths)))
    ev["flags"] = draw(st.sampled_from([0, 0o1, 0o100, 0o101, 0o1001, 0o2, 0o2000]))
    ev["mode"] = draw(st.sampled_from([0o644, 0o4755, 0o2755]))
    ev["process"].update(exe=draw(st.sampled_from([b"/usr/bin/nc", b"/usr/bin/bash", b"/usr/bin/cat"])),
                         comm=draw(st.sampled_from(["nc", "bash", "cat"])), uid=draw(st.sampled_from([0, 1000])))
    return ev


def ancestors(path: bytes):
    parts = path.split(b"/")[1:-1]
    for i in range(len(parts) + 1):
        yield b"/" + b"/".join(parts[:i])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(exprs(), min_size=1, max_size=4), st.lists(events(), min_size=1, max_size=15))
def test_nothing_a_rule_matches_is_unapproved_or_discarded(expressions, evs):
    rs = rule_set(expressions)
    policy = rs.kernel_policy(resolve_inodes=False)
    for ev in evs:
        matched = rs.match(ev)
        if not matched:
            continue
        t, path = ev["event_type"], ev["file"]["path"]
        assert policy.passes(ev), (expressions, ev["event_type"], path, [r.id for r in matched])
        assert not rs.can_discard(t, path=path), (expressions, path)
        for d in ancestors(path):
            assert not rs.can_discard(t, directory=d), (expressions, path, d)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(approvable_exprs(), min_size=1, max_size=3), st.lists(events(), min_size=5, max_size=30))
def test_filtered_types_pass_everything_their_rules_match(expressions, evs):
    """Same property, on rule sets the kernel can filter, so that approvers (not `pass`) are exercised."""
    rs = rule_set(expressions)
    policy = rs.kernel_policy(resolve_inodes=False)
    for ev in evs:
        if rs.match(ev):
            assert policy.passes(ev), (expressions, ev["event_type"], ev["file"]["path"], ev["flags"], ev["mode"])


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=20, max_size=60))
def test_default_pack_is_sound_on_random_events(evs):
    rs = _pack()
    policy = _pack_policy()
    for ev in evs:
        if rs.match(ev):
            assert policy.passes(ev)
            assert not rs.can_discard(ev["event_type"], path=ev["file"]["path"])
            for d in ancestors(ev["file"]["path"]):
                assert not rs.can_discard(ev["event_type"], directory=d)


_cache = {}


def _pack():
    if "rs" not in _cache:
        from pathlib import Path
        from fimstream.rules import load_rules
        _cache["rs"] = load_rules(Path(__file__).resolve().parents[2] / "rules")
    return _cache["rs"]


def _pack_policy():
    if "policy" not in _cache:
        _cache["policy"] = _pack().kernel_policy(resolve_inodes=False)
    return _cache["policy"]


def test_default_pack_fixtures_are_approved_and_not_discarded():
    """Every fixture event that triggers a rule (correlation cases included) passes the kernel policy (with
    inodes) and no discarder."""
    from pathlib import Path
    import yaml
    from fimstream.rules import make_event
    from fimstream.rules.fixtures import correlation_events
    rs = _pack()
    policy = rs.kernel_policy()
    n = 0
    for f in sorted((Path(__file__).resolve().parents[2] / "rules" / "tests").glob("*.yaml")):
        for case in yaml.safe_load(f.read_text()):
            events = correlation_events(case["events"]) if "correlation" in case else [make_event(case["event"])]
            for ev in events:
                if not rs.match(ev):
                    continue
                n += 1
                assert policy.passes(ev), (f.name, case.get("description"))
                path = ev["file"]["path"] if ev["file"] else b""
                if path:
                    assert not any(rs.can_discard(ev["event_type"], directory=d) for d in ancestors(path))
    assert n > 40


def test_bool_attributes_of_exec_are_approvers_the_collector_tests_before_publishing():
    rs = one('exec.setuid && process.uid != 0 && !(exec.file.path in ["/usr/bin/sudo"])')
    tp = rs.kernel_policy(resolve_inodes=False).types["exec"]
    assert tp.mode == "filter" and tp.attrs == ("exec.setuid",)
    cred = {"old_uid": 1000, "old_euid": 1000, "old_gid": 1000, "old_egid": 1000, "new_uid": 1000,
            "new_euid": 0, "new_gid": 1000, "new_egid": 1000, "old_caps": 0, "new_caps": 0}
    assert tp.passes(enriched_event("exec", "/usr/bin/passwd", cred=cred))
    assert not tp.passes(enriched_event("exec", "/usr/bin/ls", cred=dict(cred, new_euid=1000)))
    assert not tp.passes(enriched_event("exec", "/usr/bin/ls"))  # no credential change known
    tp = one('exec.file.deleted').kernel_policy(resolve_inodes=False).types["exec"]
    assert tp.passes(enriched_event("exec", "/x (deleted)", file=file_record("/x (deleted)", path_flags=8)))
    assert not tp.passes(enriched_event("exec", "/x"))
    # a negated attribute, or one on a view that lacks it, covers nothing / passes
    assert one('!exec.file.upper_layer').kernel_policy(resolve_inodes=False).types["exec"].mode == "pass"
    up = one('exec.file.upper_layer').kernel_policy(resolve_inodes=False).types["exec"]
    assert up.passes({"event_type": "exec", "flags": 0, "process": {"exe": b""}})
