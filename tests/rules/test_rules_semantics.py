"""What expressions mean on decoded events: operators, patterns, arrays, event types, lists, macros,
exceptions, scope, messages - and the problems a bad rule file reports."""
from __future__ import annotations

import pytest

from fimstream.rules import RuleError, load_rules
from rules_helpers import hits, one, problems, rules

OPEN_W = {"event_type": "open", "flags": "O_WRONLY|O_CREAT"}


def matches(expr, **event) -> bool:
    return hits(one(expr), **event) == ["r"]


def test_equality_inequality_and_bit_tests():
    e = dict(OPEN_W, file="/etc/passwd")
    assert matches('open.file.path == "/etc/passwd" && open.flags & O_CREAT > 0', **e)
    assert not matches('open.file.path == "/etc/passwd" && open.flags & O_TRUNC > 0', **e)
    assert matches('open.file.path != "/etc/shadow"', **e)
    assert matches("open.flags & O_CREAT", **e)  # bare bit test means non-zero
    assert matches("open.flags & (O_WRONLY | O_RDWR) == O_WRONLY", **e)
    assert matches("open.flags ^ O_WRONLY == O_CREAT", **e)
    assert matches("open.flags & ^O_CREAT == O_WRONLY", **e)


def test_integer_comparisons_and_octal():
    e = {"event_type": "chmod", "file": "/x", "mode": 0o4755}
    assert matches("chmod.file.destination.mode >= 04000 && chmod.file.destination.mode < 0o10000", **e)
    assert matches("chmod.file.destination.mode & S_ISUID > 0", **e)
    assert not matches("chmod.file.destination.mode & S_ISGID > 0", **e)
    assert matches("process.uid <= 0", **e)  # default uid is 0


def test_in_and_not_in():
    e = {"event_type": "exec", "file": "/usr/bin/nc"}
    assert matches('exec.file.path in ["/usr/bin/nc", "/bin/nc"]', **e)
    assert not matches('exec.file.path not in ["/usr/bin/nc", "/bin/nc"]', **e)
    assert matches('exec.file.name in ["nc"] && process.pid not in [1, 2]', **e)


@pytest.mark.parametrize("glob,path,expected", [
    ("/etc/*", "/etc/passwd", True),
    ("/etc/*", "/etc/ssh/sshd_config", False),  # * stays in one component
    ("/etc/**", "/etc/ssh/sshd_config", True),
    ("/etc/**", "/etcetera/x", False),
    ("/home/*/.bashrc", "/home/alice/.bashrc", True),
    ("/home/*/.bashrc", "/home/alice/src/.bashrc", False),
    ("/**/.ssh/authorized_keys", "/home/a/.ssh/authorized_keys", True),
    ("/a/**/b", "/a/b", True),
    ("/a/**/b", "/a/x/y/b", True),
    ("/etc/rc?.d/*", "/etc/rc2.d/S01x", True),
    ("/etc/passwd", "/etc/passwd", True),
])
def test_globs_on_paths(glob, path, expected):
    e = {"event_type": "open", "file": path}
    assert matches(f'open.file.path =~ "{glob}"', **e) is expected
    assert matches(f'open.file.path in [~"{glob}"]', **e) is expected
    assert matches(f'open.file.path !~ "{glob}"', **e) is not expected


def test_star_crosses_nothing_only_for_paths():
    assert matches('process.comm =~ "kworker/*"', event_type="open", file="/x", process={"comm": "kworker/0:1/x"})
    assert matches('exec.args =~ "* -e *"', event_type="exec", file="/bin/nc", process={"args": ["nc", "-e", "/bin/sh"]})


def test_regex_searches_and_can_be_anchored():
    e = {"event_type": "open", "file": "/var/www/shell.php"}
    assert matches('open.file.path =~ r"\\.php$"', **e)
    assert not matches('open.file.path =~ r"^/www"', **e)
    assert matches('open.file.path == r"www/.*\\.php"', **e)


def test_non_utf8_paths_match_byte_exact():
    e = {"event_type": "open", "file": b"/etc/caf\xe9"}
    assert matches('open.file.path == "/etc/caf\\xe9"', **e)
    assert matches('open.file.path =~ "/etc/caf\\xe9*"', **e)
    assert matches('open.file.name == "caf\\xe9"', **e)
    assert not matches('open.file.path == "/etc/café"', **e)  # UTF-8 é is c3 a9, not e9
    assert matches('open.file.path == "/etc/café"', event_type="open", file="/etc/café")


def test_ancestors_match_if_any_ancestor_matches():
    proc = {"ancestors": [{"pid": 10, "comm": "bash", "exe": "/usr/bin/bash"},
                          {"pid": 1, "comm": "sshd", "exe": "/usr/sbin/sshd"}]}
    e = {"event_type": "open", "file": "/x", "process": proc}
    assert matches('process.ancestors.file.name == "sshd"', **e)
    assert matches('process.ancestors.file.path =~ "/usr/sbin/*"', **e)
    assert matches('process.ancestors.comm in ["cron", "sshd"]', **e)
    assert not matches('process.ancestors.file.name != "sshd"', **e)  # no ancestor is sshd: false
    assert matches('process.ancestors.file.name != "cron"', **e)
    assert matches('process.parent.comm == "bash" && process.ancestors.pid == 1', **e)


def test_event_type_prefix_selects_the_type():
    rs = one('open.file.path == "/x"')
    assert rs.rules[0].event_types == {"open"}
    assert hits(rs, event_type="open", file="/x") == ["r"]
    assert hits(rs, event_type="unlink", file="/x") == []


def test_negated_typed_comparison_still_selects_its_type():
    rs = one('!open.file.path == "/x"')
    assert rs.rules[0].event_types == {"open"}
    assert hits(rs, event_type="open", file="/y") == ["r"]
    assert hits(rs, event_type="unlink", file="/y") == []


def test_alternatives_of_different_types_under_or():
    rs = one('open.file.path == "/x" || rename.file.destination.path == "/x"')
    assert rs.rules[0].event_types == {"open", "rename"}
    assert hits(rs, event_type="rename", file="/a", target="/x") == ["r"]
    assert hits(rs, event_type="rename", file="/x", target="/a") == []  # open.* is false for renames


def test_mixing_types_under_and_is_an_error():
    (p,) = problems("rules:\n  - id: r\n    expression: open.file.path == \"/x\" && chmod.file.path == \"/x\"\n")
    assert p.startswith("t.yaml:3:40:") and "different event types" in p and "use ||" in p


def test_a_negated_side_does_not_narrow_the_types():
    rs = one('(create.file.path =~ "/dev/**" || mknod.file.path =~ "/dev/**") && !create.file.path =~ "/dev/shm/**"')
    assert rs.rules[0].event_types == {"create", "mknod"}
    assert hits(rs, event_type="mknod", file="/dev/x") == ["r"]
    assert hits(rs, event_type="create", file="/dev/shm/x") == []


def test_event_type_field():
    rs = one('event.type in ["setgroups", "unshare"] && process.uid != 0')
    assert rs.rules[0].event_types == {"setgroups", "unshare"}
    assert hits(rs, event_type="setgroups", process={"uid": 5}) == ["r"]
    (p,) = problems('rules:\n  - id: r\n    expression: event.type == "opne"\n')
    assert "unknown event type 'opne'" in p


def test_untyped_rule_matches_every_type_with_a_warning():
    rs = one('process.comm == "nc"')
    assert len(rs.rules[0].event_types) > 20
    assert any("every type" in w.message for w in rs.warnings)


def test_network_ip_cidr_and_constants():
    e = {"event_type": "connect", "net": {"family": "AF_INET", "remote_addr": "10.1.2.3", "remote_port": 4444}}
    assert matches('connect.addr.ip in ["10.0.0.0/8"] && connect.addr.port == 4444', **e)
    assert matches('connect.addr.ip == "10.1.2.3" && connect.addr.family == AF_INET', **e)
    assert not matches('connect.addr.ip not in ["10.0.0.0/8", "::1/128"]', **e)
    assert matches('connect.addr.ip != "2001:db8::1"', **e)
    (p,) = problems('rules:\n  - id: r\n    expression: connect.addr.ip == "10.0.0.300"\n')
    assert "expected an IP address" in p


def test_credentials_capabilities_and_signals():
    e = {"event_type": "capset", "cred": {"old_caps": "CAP_CHOWN", "new_caps": "CAP_CHOWN|CAP_SYS_ADMIN"}}
    assert matches("capset.gained & CAP_SYS_ADMIN > 0 && capset.gained & CAP_CHOWN == 0", **e)
    assert matches("exit.code == SIGKILL", event_type="exit", exit_code=9)


def test_durations_compare_with_process_age():
    e = {"event_type": "exec", "file": "/bin/sh", "time_ns": 100 * 10**9, "attrs": {"boot_ns": str(40 * 10**9)},
         "process": {"start_time_ns": 58 * 10**9}}  # started 2 s before the event
    assert matches("process.age < 5s", **e)
    assert not matches("process.age > 1m", **e)
    unknown = dict(e, attrs={})
    assert not matches("process.age < 5s", **unknown) and not matches("process.age > 5s", **unknown)
    (p,) = problems("rules:\n  - id: r\n    expression: process.age < 5\n")
    assert "expected a duration" in p


def test_k8s_fields_labels_and_container():
    e = {"event_type": "exec", "file": "/bin/sh", "container_id": "abc",
         "k8s": {"namespace": "shop", "labels": {"app": "web", "app.kubernetes.io/name": "front"}}}
    assert matches('k8s.namespace != "kube-system" && container.id != ""', **e)
    assert matches('k8s.labels.app == "web" && k8s.labels["app.kubernetes.io/name"] == "front"', **e)
    assert not matches('k8s.labels.tier == "db"', **e)


def test_lists_and_macros_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text('lists:\n  shells: [/bin/sh, /bin/bash]\n'
                                     'macros:\n  shell_exec: exec.file.path in shells\n')
    (tmp_path / "b.yaml").write_text('rules:\n  - id: r\n    expression: shell_exec && process.uid == 0\n')
    rs = load_rules(tmp_path)
    assert hits(rs, event_type="exec", file="/bin/bash") == ["r"]
    assert hits(rs, event_type="exec", file="/bin/zsh") == []


def test_list_items_may_be_patterns_and_lists_splice():
    rs = rules('lists:\n  a: [/etc/passwd, {glob: "/etc/ssh/*"}, {regex: "shadow$"}]\n  b: [/x]\n'
               'rules:\n  - id: r\n    expression: open.file.path in a || open.file.path in [b, "/y"]\n')
    for path, want in [("/etc/passwd", True), ("/etc/ssh/k", True), ("/etc/gshadow", True), ("/x", True),
                       ("/y", True), ("/etc/ssh/a/b", False)]:
        assert (hits(rs, event_type="open", file=path) == ["r"]) is want, path


def test_macro_cycles_and_misuse_are_reported():
    ps = problems("macros:\n  a: b\n  b: a\nrules:\n  - id: r\n    expression: a && open.file.path == \"/x\"\n")
    assert any("macro cycle" in p for p in ps)
    ps = problems("lists:\n  l: [a]\nrules:\n  - id: r\n    expression: l\n")
    assert any("is a list" in p for p in ps)


def test_exceptions_silence_a_rule_without_editing_it():
    text = ('lists:\n  editors: [vim, nano]\n'
            'rules:\n  - id: r\n    expression: open.file.path =~ "/etc/**" || unlink.file.path =~ "/etc/**"\n'
            'exceptions:\n  - rule: r\n    when: {process.file.name: editors, process.uid: [0]}\n'
            '  - rule: r\n    expression: open.file.path == "/etc/motd"\n')
    rs = rules(text)
    assert rs.rules[0].event_types == {"open", "unlink"}  # the open-only exception does not narrow it
    assert hits(rs, event_type="open", file="/etc/hosts", process={"exe": "/usr/bin/cat"}) == ["r"]
    assert hits(rs, event_type="open", file="/etc/hosts", process={"exe": "/usr/bin/vim", "uid": 0}) == []
    assert hits(rs, event_type="open", file="/etc/hosts", process={"exe": "/usr/bin/vim", "uid": 1000}) == ["r"]
    assert hits(rs, event_type="open", file="/etc/motd") == []
    assert hits(rs, event_type="unlink", file="/etc/motd") == ["r"]


def test_exception_problems():
    ps = problems('rules:\n  - id: r\n    expression: open.file.path == "/x"\n'
                  'exceptions:\n  - rule: nope\n    when: {process.uid: [0]}\n'
                  '  - rule: r\n    when: {chmod.file.path: [/x]}\n'
                  '  - rule: r\n    when: {no.such.field: [1]}\n')
    assert any(p.startswith("t.yaml:5:") and "unknown rule 'nope'" in p for p in ps)
    assert any("never applies to rule 'r'" in p for p in ps)
    assert any("unknown field 'no.such.field'" in p for p in ps)


def test_scope_namespaces_and_pod_labels():
    rs = one('exec.file.name == "sh"', scope="{namespaces: [shop], pod_labels: {app: [web, api]}}")
    base = {"event_type": "exec", "file": "/bin/sh"}
    assert hits(rs, **base, k8s={"namespace": "shop", "labels": {"app": "api"}}) == ["r"]
    assert hits(rs, **base, k8s={"namespace": "shop", "labels": {"app": "db"}}) == []
    assert hits(rs, **base, k8s={"namespace": "dev", "labels": {"app": "web"}}) == []
    assert hits(rs, **base) == []  # host events are outside any namespace scope
    rs = one('exec.file.name == "sh"', scope="{exclude_namespaces: [kube-system]}")
    assert hits(rs, **base) == ["r"]
    assert hits(rs, **base, k8s={"namespace": "kube-system"}) == []


def test_rule_metadata_message_and_disabled_rules():
    rs = rules('rules:\n  - id: a\n    expression: open.file.path == "/x"\n    severity: critical\n'
               '    tags: [T1003.008]\n    actions: [alert, kill]\n    score: 7.5\n'
               '    message: "{process.file.path} opened {open.file.path} ({open.file.name})"\n'
               '  - id: b\n    expression: open.file.path == "/x"\n    enabled: false\n')
    a = rs.by_id["a"]
    assert (a.severity, a.tags, a.actions, a.score, a.line) == ("critical", ("T1003.008",), ("alert", "kill"), 7.5, 2)
    from fimstream.rules import make_event
    ev = make_event({"event_type": "open", "file": b"/x", "process": {"exe": b"/usr/bin/c\xe9t"}})
    assert [r.id for r in rs.match(ev)] == ["a"]  # b is disabled
    assert a.render_message(ev) == "/usr/bin/c\\xe9t opened /x (x)"
    assert len(a.version) == 12  # a hash of the logic (expression, scope, exceptions) unless given


def test_every_problem_is_reported_with_its_position():
    ps = problems('rules:\n'
                  '  - id: a\n    expression: open.file.path == \n'
                  '  - id: b\n    expression: open.file.path == "/x"\n    severity: urgent\n'
                  '  - id: b\n    expression: open.file.path == "/y"\n'
                  '  - id: c\n    expression: open.file.path == "/x"\n    actions: [alert, explode]\n    colour: red\n'
                  '  - expression: open.file.path == "/x"\n'
                  'bogus: 1\n')
    text = "\n".join(ps)
    assert "t.yaml:3:" in text and "expected a field, a value" in text
    assert "t.yaml:6:" in text and "severity: expected one of" in text
    assert "duplicate rule id 'b'" in text
    assert "unknown 'explode'" in text and "unknown rule key 'colour'" in text
    assert "rule without id" in text and "unknown top-level key 'bogus'" in text
    assert len(ps) >= 7


def test_type_errors():
    for expr, msg in [('open.file.path > "/x"', "needs numbers"), ('open.flags == "x"', "expected an integer"),
                      ('open.flags =~ "x*"', "need a string field"), ("open.file.path", "expected a condition"),
                      ('"a" == "b"', "needs a field"), ('open.flags & "x" > 0', "bit operators need integers"),
                      ('process.comm == "\\xff"', "only for byte fields")]:
        with pytest.raises(RuleError) as err:
            one(expr.replace("'", "''"))
        assert msg in str(err.value), (expr, str(err.value))
