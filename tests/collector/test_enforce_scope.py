"""Kubernetes-scoped kill/deny rules (issue 5): only processes in the selected pods are enforced on.

The pods come from the fake API server (real `kubernetes` client, node-scoped watch); the victims are real
processes moved into cgroup directories shaped like the pods' (podfixtures.cgroup_path, systemd driver)
under the unified hierarchy, so the kernel's bpf_get_current_cgroup_id() of the victim is the id the
collector found for the pod.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fimstream.collector.enforce import Enforcer
from fimstream.collector.enforce_scope import cgroup2_root, cgroup_id
from fimstream.k8s import K8sSettings, MetadataCache, WatchSettings
from fimstream.rules import load_rules_text
from fimstream.rules.enforcement import EnforcementPolicy, compile_policy
from tests.k8s import podfixtures
from tests.k8s.fake_apiserver import FakeApiServer

from .conftest import root_only
from .test_enforce_deny import mnt  # noqa: F401 - fixture: a private tmpfs for the deny marks

pytestmark = root_only
NODE = "worker-1"
FAST = dict(backoff_initial=0.05, backoff_max=0.5, watch_timeout=(20, 30), resync_seconds=0)
ROOT = cgroup2_root()


@pytest.fixture
def cluster(tmp_path):
    with FakeApiServer(bookmark_interval=0.2) as api:
        for obj in podfixtures.cluster_objects():
            api.create(obj)
        cache = MetadataCache(K8sSettings(kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                                          node_name=NODE, watch=WatchSettings(**FAST)))
        cache.start()
        assert cache.wait_synced(10)
        yield api, cache
        cache.stop()


@pytest.fixture
def cgroups():
    """make(pod, container) -> the v2 cgroup directory shaped like that container's; removed afterwards."""
    if ROOT is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    made: list[Path] = []

    def make(pod: dict, container: str) -> Path:
        d = Path(ROOT + podfixtures.cgroup_path(pod, container, "systemd"))
        parts = [p for p in d.relative_to(ROOT).parts]
        for i in range(1, len(parts) + 1):
            p = Path(ROOT, *parts[:i])
            if not p.exists():
                p.mkdir()
                made.append(p)
        return d
    yield make
    for d in reversed(made):
        for _ in range(50):  # a victim that just died may still be listed for a moment
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def pod(name: str, template: str, namespace: str | None = None, labels: dict | None = None) -> dict:
    return podfixtures.clone(podfixtures.load(template), name, namespace=namespace, node=NODE, labels=labels)


def run_in(cgroup: Path | None, code: str, *args) -> subprocess.CompletedProcess:
    """A victim that moves itself into `cgroup` (v2) before it runs `code` (None: stays where we are)."""
    def enter():
        if cgroup is not None:
            with open(cgroup / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=enter)
    out, err = p.communicate(timeout=30)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    r.pid = p.pid
    return r


WRITE = "import sys; f = open(sys.argv[1], 'r+'); f.write('EVIL'); f.flush(); print('written')"
READ = "import sys\ntry:\n    print(open(sys.argv[1]).read(), end='')\nexcept OSError as e:\n    print('errno', e.errno)"


@pytest.fixture
def enforcer(collector, cluster):
    _, cache = cluster
    e = Enforcer(collector, k8s_cache=cache, cgroup_root=ROOT)
    events = []
    collector.drain()
    collector.on_event = lambda ev: events.append(ev) if ev.type_name == "enforcement" else None
    e.kill_events = events
    yield e
    e.apply(EnforcementPolicy("none"))
    e.deny.close()
    collector.on_event = lambda ev: None


def test_scoped_kill_hits_only_the_selected_pods_cgroups(collector, cluster, cgroups, enforcer, tmp_path):
    api, cache = cluster
    web = api.create(pod("web-scoped-1", "pod-containerd-deployment"))  # shop, tier=frontend
    exporter = api.create(pod("exporter-1", "pod-docker-daemonset"))  # monitoring
    other_shop = api.create(pod("web-scoped-2", "pod-containerd-deployment", labels={"tier": "backend"}))
    web_cg, exporter_cg, backend_cg = (cgroups(web, "nginx"), cgroups(exporter, "node-exporter"),
                                       cgroups(other_shop, "nginx"))
    target = tmp_path / "data"
    target.write_text("original\n")
    policy = compile_policy(load_rules_text(f"""rules:
  - id: shop_frontend_readonly
    expression: 'write.file.path == "{target}"'
    actions: [kill]
    scope: {{namespaces: [shop], pod_labels: {{tier: frontend}}}}
"""))
    assert policy.refused == []
    deadline = time.monotonic() + 10
    while cache.by_pod_uid(other_shop["metadata"]["uid"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    enforcer.apply(policy)
    assert enforcer.scope.stats()["pods"] >= 3

    assert run_in(exporter_cg, WRITE, target).returncode == 0  # another namespace
    assert run_in(backend_cg, WRITE, target).returncode == 0  # same namespace, label not selected
    assert run_in(None, WRITE, target).returncode == 0  # a host process
    target.write_text("original\n")
    victim = run_in(web_cg, WRITE, target)
    assert victim.returncode == -9 and target.read_text() == "original\n"
    time.sleep(0.05)
    collector.drain()
    [ev] = [e for e in enforcer.kill_events if e.pid == victim.pid]
    assert ev.attrs["rule_id"] == "shop_frontend_readonly"
    assert ev.hdr[6] == cgroup_id(web_cg)  # the kernel's cgroup id (v2) is the directory's inode

    # a selected pod that starts after the rules were loaded is picked up by the next tick
    late = api.create(pod("web-scoped-3", "pod-containerd-deployment"))
    late_cg = cgroups(late, "nginx")
    deadline = time.monotonic() + 10
    while cache.by_pod_uid(late["metadata"]["uid"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    enforcer.tick()
    assert run_in(late_cg, WRITE, target).returncode == -9


def test_scoped_deny_decides_by_the_requesters_cgroup(collector, cluster, cgroups, enforcer, mnt):  # noqa: F811
    api, cache = cluster
    web = api.create(pod("web-deny-1", "pod-containerd-deployment"))
    exporter = api.create(pod("exporter-deny-1", "pod-docker-daemonset"))
    web_cg, exporter_cg = cgroups(web, "nginx"), cgroups(exporter, "node-exporter")
    (mnt / "secret").write_text("s3cret")
    deadline = time.monotonic() + 10
    while cache.by_pod_uid(exporter["metadata"]["uid"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    enforcer.apply(compile_policy(load_rules_text(f"""rules:
  - id: shop_no_secret
    expression: 'open.file.path == "{mnt}/secret"'
    actions: [deny]
    scope: {{namespaces: [shop]}}
""")))
    assert enforcer.deny_backend == "fanotify"
    assert run_in(web_cg, READ, mnt / "secret").stdout == b"errno 1\n"
    assert run_in(exporter_cg, READ, mnt / "secret").stdout == b"s3cret"
    assert run_in(None, READ, mnt / "secret").stdout == b"s3cret"
    [ev] = enforcer.drain_events()
    assert ev["attrs"]["rule_id"] == "shop_no_secret" and ev["attrs"]["outcome"] == "denied"
    assert ev["process"]["cgroup"] == podfixtures.cgroup_path(web, "nginx", "systemd").encode()
