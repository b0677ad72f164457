"""The pod metadata cache against the fake API server, through the real `kubernetes` client."""
from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import fastavro
import pytest

from fimstream.containers import ContainerRef, parse_cgroup
from fimstream.k8s import Change, K8sSettings, MetadataCache
from tests.k8s import podfixtures as pf

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def ref_of(pod: dict, container: str | None = None, driver: str = "systemd") -> ContainerRef:
    """What the enricher has: the cgroup path kubelet made for that container, parsed."""
    return parse_cgroup(pf.cgroup_path(pod, container, driver).encode())


EXPECTED = {  # fixture -> container -> (namespace, pod, workload kind, workload name, image, runtime, node, sa)
    "pod-containerd-deployment": {
        "nginx": ("shop", "web-7d4b9c8f5-x2vqp", "Deployment", "web", "nginx:1.25.4", "containerd", "worker-1", "web"),
        "log-shipper": ("shop", "web-7d4b9c8f5-x2vqp", "Deployment", "web", "cr.fluentbit.io/fluent/fluent-bit:3.0.4",
                        "containerd", "worker-1", "web")},
    "pod-crio-statefulset": {
        "postgres": ("data", "postgres-0", "StatefulSet", "postgres", "registry.example.com/db/postgres:16.3", "cri-o",
                     "worker-2", "default"),
        "fix-permissions": ("data", "postgres-0", "StatefulSet", "postgres", "registry.example.com/base/busybox:1.36",
                            "cri-o", "worker-2", "default")},
    "pod-docker-daemonset": {
        "node-exporter": ("monitoring", "node-exporter-7hkqz", "DaemonSet", "node-exporter",
                          "quay.io/prometheus/node-exporter:v1.8.0", "docker", "worker-1", "node-exporter")},
    "pod-containerd-cronjob": {
        "report": ("batch", "nightly-report-28605720-m4kzt", "CronJob", "nightly-report", "ghcr.io/example/report:2.4.1",
                   "containerd", "worker-1", "reporter"),
        "wait-db": ("batch", "nightly-report-28605720-m4kzt", "CronJob", "nightly-report", "busybox:1.36", "containerd",
                    "worker-1", "reporter")},
    "pod-static-mirror": {
        "etcd": ("kube-system", "etcd-control-plane-1", "Node", "control-plane-1", "registry.k8s.io/etcd:3.5.12-0",
                 "containerd", "control-plane-1", "")},
}


# ------------------------------------------------------------------------------------- initial list
@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_initial_list_resolves_every_runtime_layout_and_owner(cluster, make_cache, driver):
    cache = make_cache()
    for fixture, containers in EXPECTED.items():
        pod = pf.load(fixture)
        for container, (ns, name, wkind, wname, image, runtime, node, sa) in containers.items():
            res = cache.resolve(ref_of(pod, container, driver))
            assert res.pending is False
            c = res.context
            assert (c.namespace, c.pod, c.workload_kind, c.workload_name, c.image, c.runtime, c.node,
                    c.service_account, c.container_name) == (ns, name, wkind, wname, image, runtime, node, sa, container)
            assert c.container_id == pf.container_ids(pod)[container]
            assert c.pod_uid == pod["metadata"]["uid"]
            assert dict(c.labels) == pod["metadata"]["labels"]
    stats = cache.stats()
    assert stats["mode"] == "kubernetes" and stats["synced"] and stats["pods"] == 6
    assert stats["lists"] == 4 and stats["relists"] == 0 and stats["gone"] == 0


def test_restarted_containers_previous_id_still_resolves(cluster, make_cache):
    cache = make_cache()
    old = "b7e1c4d2a9f05e3c8b6d1a7f2e4c9b0d5a3f8e6c1b7d4a2e9f0c5b3d8a6e1f7c"  # lastState.terminated of nginx
    ctx = cache.by_container_id(old)
    assert ctx is not None and ctx.container_name == "nginx" and ctx.runtime == "containerd"


def test_static_pod_cgroups_carry_the_mirror_hash(cluster, make_cache):
    cache = make_cache()
    pod = pf.load("pod-static-mirror")
    pod_level = cache.resolve(ref_of(pod))  # the pod's own cgroup: kubepods-burstable-pod<hash>.slice
    assert pod_level.context.pod == "etcd-control-plane-1" and not pod_level.pending
    assert cache.by_pod_uid("8a1f2b3c4d5e6f708192a3b4c5d6e7f8") is cache.by_pod_uid(pod["metadata"]["uid"])


def test_records_encode_with_the_enrichment_schema(cluster, make_cache):
    cache = make_cache()
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "enrichment.avsc").read_text()))
    for change in cache.snapshot():
        ref = ContainerRef("containerd", change.key, None) if change.kind == "container" else ContainerRef("", "", change.key)
        record = change.context.enrichment(ref.container_id, ref.runtime)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        buf.seek(0)
        back = fastavro.schemaless_reader(buf, schema)
        assert back["k8s"] == record["k8s"] and back["enrich_status"] == "kubernetes"


def test_pod_level_record_names_the_only_container(cluster, make_cache):
    cache = make_cache()
    single = cache.by_pod_uid(pf.load("pod-docker-daemonset")["metadata"]["uid"])
    assert (single.container_name, single.image) == ("node-exporter", "quay.io/prometheus/node-exporter:v1.8.0")
    several = cache.by_pod_uid(pf.load("pod-containerd-deployment")["metadata"]["uid"])
    assert (several.container_name, several.image, several.container_id) == ("", "", "")


def test_annotations_allow_list(cluster, make_cache):
    cache = make_cache(annotations=("prometheus.io/*", "openshift.io/scc"))
    web = cache.by_pod_uid(pf.load("pod-containerd-deployment")["metadata"]["uid"])
    assert dict(web.annotations) == {"prometheus.io/port": "9113", "prometheus.io/scrape": "true"}
    pg = cache.by_pod_uid(pf.load("pod-crio-statefulset")["metadata"]["uid"])
    assert dict(pg.annotations) == {"openshift.io/scc": "restricted-v2"}
    assert dict(make_cache().by_pod_uid(web.pod_uid).annotations) == {}  # default: none kept


def test_namespace_labels(cluster, make_cache):
    cache = make_cache()
    assert cache.namespace_labels("shop")["team"] == "storefront"
    cluster.modify("namespaces", "", "shop", lambda ns: ns["metadata"]["labels"].update(team="checkout"))
    until(lambda: cache.namespace_labels("shop").get("team") == "checkout")
    cluster.delete("namespaces", "", "batch")
    until(lambda: not cache.namespace_labels("batch"))


def test_pagination_reads_every_page(cluster, make_cache):
    cache = make_cache(watch={"page_size": 2})
    assert cache.stats()["pods"] == 6
    pages = cluster.requests_for("/api/v1/pods", limit="2")
    assert len(pages) == 3 and sum(1 for q in pages if q.get("continue")) == 2


def test_expired_continue_token_restarts_the_list(cluster, make_cache):
    state = {"done": False}

    def compact_mid_list(method, path, query):
        if path == "/api/v1/pods" and query.get("continue") and not state["done"]:
            state["done"] = True
            cluster.create(pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-late1"))
            cluster.compact()  # the token's snapshot is gone: 410 Expired

    cluster.before_request = compact_mid_list
    cache = make_cache(watch={"page_size": 2})
    assert state["done"]
    assert cache.stats()["pods"] == 7 and cache.stats()["resources"]["Pod"]["gone"] == 1


# ----------------------------------------------------------------------------- add / modify / delete
def test_add_modify_delete_with_change_callbacks(cluster, make_cache):
    changes: list[Change] = []
    cache = make_cache(listeners=[changes.append])
    changes.clear()
    pod = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-new01")
    cids = pf.container_ids(pod)
    cluster.create(pod)
    until(lambda: cache.by_container_id(cids["nginx"]))
    keys = {(c.kind, c.key) for c in changes}
    assert ("pod", pod["metadata"]["uid"]) in keys and ("container", cids["nginx"]) in keys
    assert all(c.context is not None for c in changes)

    changes.clear()
    cluster.modify("pods", "shop", "web-7d4b9c8f5-new01",
                   lambda p: p["metadata"]["labels"].update({"tier": "edge"}))
    until(lambda: cache.by_container_id(cids["nginx"]).labels["tier"] == "edge")
    assert {c.key for c in changes} >= {pod["metadata"]["uid"], cids["nginx"], cids["log-shipper"]}

    changes.clear()  # a status-only update (conditions) changes nothing enrichment uses: no callback
    cluster.modify("pods", "shop", "web-7d4b9c8f5-new01",
                   lambda p: p["status"]["conditions"][0].update(lastTransitionTime="2024-05-14T10:00:00Z"))
    rv = cluster.resource_version
    until(lambda: int(cache.stats()["resources"]["Pod"]["resource_version"]) >= rv)
    assert changes == []

    uid = pod["metadata"]["uid"]
    ids = {c.key for c in cache.snapshot() if c.kind == "container" and c.context.pod_uid == uid}
    assert len(ids) == 3  # nginx, log-shipper, and nginx before its restart
    cluster.delete("pods", "shop", "web-7d4b9c8f5-new01")
    until(lambda: cache.stats()["tombstones"] == 1)
    # Deleted, but late events (Kafka lag) still get the metadata until the tombstone expires.
    assert cache.resolve(ref_of(pod, "nginx")).context.pod == "web-7d4b9c8f5-new01"
    changes.clear()
    cache.expire(time.monotonic() + cache.settings.tombstone_seconds + 1)
    assert cache.by_container_id(cids["nginx"]) is None
    assert {(c.kind, c.key, c.context) for c in changes} == {("pod", uid, None)} | {
        ("container", cid, None) for cid in ids}
    assert cache.resolve(ref_of(pod, "nginx")) == (None, False)  # gone: not worth holding events for


def test_ephemeral_debug_container(cluster, make_cache):
    cache = make_cache()

    def add_debugger(p):
        p["spec"]["ephemeralContainers"] = [{"name": "debugger-x7k2p", "image": "busybox:1.36", "stdin": True,
                                             "targetContainerName": "nginx", "tty": True,
                                             "terminationMessagePolicy": "File"}]
        p["status"]["ephemeralContainerStatuses"] = [{
            "containerID": "containerd://" + "ab" * 32, "image": "docker.io/library/busybox:1.36",
            "imageID": "", "lastState": {}, "name": "debugger-x7k2p", "ready": False, "restartCount": 0,
            "state": {"running": {"startedAt": "2024-05-14T12:00:00Z"}}}]

    cluster.modify("pods", "shop", "web-7d4b9c8f5-x2vqp", add_debugger)
    ctx = until(lambda: cache.by_container_id("ab" * 32))
    assert (ctx.container_name, ctx.image, ctx.workload_name) == ("debugger-x7k2p", "busybox:1.36", "web")


def test_container_id_that_left_the_status_expires(cluster, make_cache):
    cache = make_cache()
    old = "b7e1c4d2a9f05e3c8b6d1a7f2e4c9b0d5a3f8e6c1b7d4a2e9f0c5b3d8a6e1f7c"

    def restart_again(p):
        nginx = next(cs for cs in p["status"]["containerStatuses"] if cs["name"] == "nginx")
        nginx["lastState"]["terminated"]["containerID"] = nginx["containerID"]
        nginx["containerID"] = "containerd://" + "cd" * 32

    changes: list[Change] = []
    cache.add_listener(changes.append)
    cluster.modify("pods", "shop", "web-7d4b9c8f5-x2vqp", restart_again)
    until(lambda: cache.by_container_id("cd" * 32))
    assert cache.by_container_id(old) is not None  # still answers late events
    cache.expire(time.monotonic() + cache.settings.tombstone_seconds + 1)
    assert cache.by_container_id(old) is None and Change("container", old, None) in changes
    assert cache.by_container_id("cd" * 32) is not None


# ------------------------------------------------------------------------------------------ owners
def test_owner_seen_after_the_pod_corrects_the_workload(api, make_cache):
    """A CronJob's pod can arrive before its Job: Job first, CronJob once the Job is seen."""
    for obj in pf.cluster_objects():
        if obj["kind"] == "Namespace":
            api.create(obj)
    changes: list[Change] = []
    cache = make_cache(listeners=[changes.append])
    pod = pf.load("pod-containerd-cronjob")
    api.create(pod)
    ctx = until(lambda: cache.by_container_id(pf.container_ids(pod)["report"]))
    assert (ctx.workload_kind, ctx.workload_name) == ("Job", "nightly-report-28605720")
    job = next(o for o in pf.cluster_objects() if o["kind"] == "Job")
    api.create(job)
    until(lambda: cache.by_container_id(pf.container_ids(pod)["report"]).workload_kind == "CronJob")
    assert cache.by_pod_uid(pod["metadata"]["uid"]).workload_name == "nightly-report"
    assert any(c.kind == "container" and c.context.workload_kind == "CronJob" for c in changes)


def test_replicaset_owners(api, make_cache):
    api.create(pf.cluster_objects()[0])  # namespace shop
    # A ReplicaSet of its own (no Deployment): the ReplicaSet is the workload.
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
          "metadata": {"name": "legacy-frontend", "namespace": "shop", "labels": {"app": "legacy"}},
          "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}}, "template": {}}}
    api.create(rs)
    pod = pf.clone(pf.load("pod-docker-daemonset"), "legacy-frontend-abcde", namespace="shop",
                   labels={"app": "legacy"})
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "legacy-frontend",
                                           "controller": True, "uid": "00000000-0000-4000-8000-000000000001"}]
    api.create(pod)
    # A Deployment's ReplicaSet not seen (yet): the pod-template-hash label names the Deployment.
    web = pf.load("pod-containerd-deployment")
    api.create(web)
    cache = make_cache()
    legacy = cache.by_pod_uid(pod["metadata"]["uid"])
    assert (legacy.workload_kind, legacy.workload_name) == ("ReplicaSet", "legacy-frontend")
    w = cache.by_pod_uid(web["metadata"]["uid"])
    assert (w.workload_kind, w.workload_name) == ("Deployment", "web")
    # Owned by something else (an Argo Rollout's ReplicaSet): that owner is the workload.
    api.modify("replicasets", "shop", "legacy-frontend", lambda r: r["metadata"].update(ownerReferences=[
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "frontend", "controller": True,
         "uid": "00000000-0000-4000-8000-000000000002"}]))
    until(lambda: cache.by_pod_uid(pod["metadata"]["uid"]).workload_kind == "Rollout")
    assert cache.stats()["owners"] == 1  # Deployment-owned ReplicaSets are implied by the pods: not stored


# -------------------------------------------------------------------------- resilience of the watch
def test_410_gone_relists_without_losing_pods(cluster, make_cache):
    changes: list[Change] = []
    cache = make_cache(listeners=[changes.append])
    stay = pf.load("pod-crio-statefulset")
    gone = pf.load("pod-docker-daemonset")
    new = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-while-away")
    assert cluster.wait_for_watches(1, "pods")
    changes.clear()
    with cluster.atomically():  # while the client is disconnected: changes, then etcd compaction
        cluster.drop_watches()
        cluster.create(new)
        cluster.delete("pods", "monitoring", "node-exporter-7hkqz")
        cluster.compact()
    until(lambda: cache.stats()["resources"]["Pod"]["relists"] >= 1)
    pod_stats = cache.stats()["resources"]["Pod"]
    assert pod_stats["gone"] >= 1
    assert cache.by_container_id(pf.container_ids(new)["nginx"]).pod == "web-7d4b9c8f5-while-away"
    assert cache.by_container_id(pf.container_ids(stay)["postgres"]).pod == "postgres-0"  # untouched pods stay
    assert cache.stats()["tombstones"] == 1  # the pod deleted while away is seen as deleted
    assert cache.resolve(ref_of(gone, "node-exporter")).context is not None  # (kept for late events)
    new_keys = {c.key for c in cache.snapshot() if c.context.pod_uid == new["metadata"]["uid"]}
    assert {c.key for c in changes} == new_keys and len(new_keys) == 4  # pod, 2 containers, 1 restarted
    # and the watch goes on from the new list
    later = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-after")
    cluster.create(later)
    until(lambda: cache.by_pod_uid(later["metadata"]["uid"]))


def test_watch_410_error_event_from_a_lagging_watch(cluster, make_cache):
    cache = make_cache()
    assert cluster.wait_for_watches(1, "pods")
    with cluster.atomically():
        cluster.create(pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-lag01"))
        cluster.compact()  # the open watch has not sent that event yet: it ends with ERROR 410
    until(lambda: cache.stats()["resources"]["Pod"]["gone"] >= 1)
    until(lambda: cache.stats()["pods"] == 7)


def test_bookmarks_advance_the_resource_version(cluster, make_cache):
    cache = make_cache(resolve_owners=False, watch_namespaces=False)
    assert cluster.wait_for_watches(1, "pods")
    before = int(cache.stats()["resources"]["Pod"]["resource_version"])
    for i in range(3):  # activity elsewhere (no pod changes) moves the store's resourceVersion
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"quiet-{i}"}})
    target = cluster.resource_version
    cluster.bookmark_now()
    until(lambda: int(cache.stats()["resources"]["Pod"]["resource_version"]) >= target)
    assert target > before and cache.stats()["resources"]["Pod"]["bookmarks"] >= 1
    assert cluster.requests_for("/api/v1/pods", watch="true", allowWatchBookmarks="true")
    # Thanks to the bookmark, a reconnect after compaction resumes without a 410 / re-list.
    with cluster.atomically():
        cluster.compact()
        cluster.drop_watches()
    until(lambda: cache.stats()["resources"]["Pod"]["reconnects"] >= 1)
    assert cluster.wait_for_watches(1, "pods")
    stats = cache.stats()["resources"]["Pod"]
    assert stats["gone"] == 0 and stats["relists"] == 0


def test_reconnect_after_dropped_connection_resumes_from_resource_version(cluster, make_cache):
    cache = make_cache()
    assert cluster.wait_for_watches(4)
    with cluster.atomically():
        assert cluster.drop_watches() == 4
        pod = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-reconn")
        cluster.create(pod)
    until(lambda: cache.by_pod_uid(pod["metadata"]["uid"]))
    until(lambda: cache.stats()["reconnects"] >= 4)
    assert cache.stats()["relists"] == 0  # resumed, not re-listed
    resumed = [q for q in cluster.requests_for("/api/v1/pods", watch="true") if q.get("resourceVersion")]
    assert len(resumed) >= 2


def test_backoff_through_server_errors(cluster, make_cache):
    cluster.fail_next(3, code=503, path_contains="/api/v1/pods")
    cache = make_cache()
    pods = cache.stats()["resources"]["Pod"]
    assert pods["errors"] == 3 and pods["synced"] and cache.stats()["pods"] == 6


def test_periodic_resync_relists_at_least_as_new(cluster, make_cache):
    cache = make_cache(watch={"resync_seconds": 0.5, "watch_timeout": (20, 30)})
    until(lambda: cache.stats()["resources"]["Pod"]["resyncs"] >= 2)
    assert cluster.requests_for("/api/v1/pods", resourceVersionMatch="NotOlderThan")
    assert cache.stats()["pods"] == 6


def test_explicit_resync_catches_a_missed_delete(cluster, make_cache):
    cache = make_cache()
    # Remove a pod behind the watch's back (as if its DELETED event had been lost).
    with cluster.atomically():
        del cluster._objects["pods"][("monitoring", "node-exporter-7hkqz")]
    cache.resync()
    until(lambda: cache.stats()["tombstones"] == 1)


# ------------------------------------------------------------------------------ visibility / timing
def test_pod_appearing_after_an_event_asked_for_it(api, make_cache):
    cache = make_cache()
    pod = pf.load("pod-pending-deployment")
    # The collector saw the container act before its pod reached us: the cgroup names the pod uid.
    cid = "e1" * 32
    ref = parse_cgroup(pf.cgroup_path(pod).encode() + f"/cri-containerd-{cid}.scope".encode())
    assert cache.resolve(ref) == (None, True)  # unknown pod uid: possibly not visible yet

    result = {}
    waiter = threading.Thread(target=lambda: result.update(r=cache.wait_for(ref, 10)))
    waiter.start()
    time.sleep(0.1)
    api.create(pod)  # pod visible, but its container has no containerID yet (ContainerCreating)
    until(lambda: cache.by_pod_uid(pod["metadata"]["uid"]))
    res = cache.resolve(ref)
    assert res.pending and res.context.pod == "api-6c8d9f7b4-tqx8n" and res.context.container_name == "api"
    assert res.context.enrichment(ref.container_id, ref.runtime)["container_id"] == cid

    def started(p):
        pf.set_container_started(p, "api", "containerd", cid)
    api.modify("pods", "shop", "api-6c8d9f7b4-tqx8n", started)
    waiter.join(10)
    assert result["r"].pending is False and result["r"].context.container_id == cid
    assert result["r"].context.workload_name == "api" and result["r"].context.runtime == "containerd"


def test_unresolvable_refs_are_not_pending(cluster, make_cache):
    cache = make_cache()
    assert cache.resolve(parse_cgroup(b"/system.slice/sshd.service")) == (None, False)  # host
    docker = parse_cgroup(b"/system.slice/docker-" + b"ee" * 32 + b".scope")  # plain docker, no pod
    assert cache.resolve(docker) == (None, False)


def test_unsynced_cache_says_pending(api, make_cache):
    api.fail_next(1000, code=503, path_contains="/api/v1/pods")
    cache = make_cache(sync=False)
    time.sleep(0.2)
    assert not cache.synced
    assert cache.resolve(parse_cgroup(b"/docker/" + b"ee" * 32)) == (None, True)
    assert "503" in cache.stats()["resources"]["Pod"]["last_error"]


# ------------------------------------------------------------------------------------- node scope
def test_node_scoped_watch_sees_only_its_node(cluster, make_cache):
    cache = make_cache(node_name="worker-2")
    uids = {c.context.pod for c in cache.snapshot() if c.kind == "pod"}
    assert uids == {"postgres-0", "api-6c8d9f7b4-tqx8n"}
    assert cluster.requests_for("/api/v1/pods", fieldSelector="spec.nodeName=worker-2")
    # A new pod is created unscheduled, then bound to worker-2: for this watch it is ADDED then.
    pod = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-sched")
    del pod["spec"]["nodeName"]
    cluster.create(pod)
    time.sleep(0.3)
    assert cache.by_pod_uid(pod["metadata"]["uid"]) is None
    cluster.modify("pods", "shop", "web-7d4b9c8f5-sched", lambda p: p["spec"].update(nodeName="worker-2"))
    until(lambda: cache.by_pod_uid(pod["metadata"]["uid"]))
    assert cache.by_pod_uid(pod["metadata"]["uid"]).node == "worker-2"


# -------------------------------------------------------------------------------------- host mode
def test_host_mode_without_any_configuration(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    caplog.set_level(logging.WARNING, logger="fimstream.k8s")
    cache = MetadataCache(K8sSettings.from_env()).start()
    try:
        assert cache.mode == "host" and cache.synced and cache.wait_synced(0)
        assert "HOST MODE" in caplog.text and "no kubeconfig" in cache.reason
        assert cache.resolve(parse_cgroup(pf.cgroup_path(pf.load("pod-crio-statefulset"), "postgres"))) == (None, False)
        assert cache.stats()["mode"] == "host" and cache.snapshot() == []
    finally:
        cache.stop()


def test_host_mode_forced_off(kubeconfig):
    cache = MetadataCache(K8sSettings.from_env({"FIMSTREAM_K8S": "off", "KUBECONFIG": str(kubeconfig)})).start()
    assert cache.mode == "host" and "FIMSTREAM_K8S=off" in cache.reason


def test_settings_from_env():
    s = K8sSettings.from_env({"FIMSTREAM_K8S_ANNOTATIONS": "a.io/x, b.io/* ,", "KUBECONFIG": "/k",
                              "FIMSTREAM_K8S_RESYNC_SECONDS": "60"}, node_name="n1")
    assert s.annotations == ("a.io/x", "b.io/*") and s.kubeconfig == "/k" and s.node_name == "n1"
    assert s.watch.resync_seconds == 60
    with pytest.raises(ValueError):
        K8sSettings.from_env({"FIMSTREAM_K8S": "maybe"})


def test_wrong_credentials_are_reported(cluster, make_cache, kubeconfig):
    cluster.token = "another-token"
    cache = make_cache(sync=False)
    until(lambda: "401" in cache.stats()["resources"]["Pod"]["last_error"])
    assert not cache.synced


def test_stop_is_prompt_while_watches_idle(cluster, make_cache):
    cache = make_cache()
    assert cluster.wait_for_watches(4)
    t = time.monotonic()
    cache.stop()
    assert time.monotonic() - t < 2
    assert all(not r._thread.is_alive() for r in cache._reflectors.values())

