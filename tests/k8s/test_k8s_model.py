"""Parsing API objects into the compact records the cache keeps (pure functions, fixture objects)."""
from __future__ import annotations

import json

import pytest

from fimstream.k8s.model import (AnnotationFilter, ContainerStatus, K8sContext, fallback_workload, parse_namespace,
                                 parse_owner, parse_pod)
from tests.k8s import podfixtures as pf


def test_parse_pod_keeps_what_enrichment_needs():
    p = parse_pod(pf.load("pod-containerd-deployment"), AnnotationFilter())
    assert (p.name, p.namespace, p.node, p.service_account) == ("web-7d4b9c8f5-x2vqp", "shop", "worker-1", "web")
    assert (p.owner_kind, p.owner_name) == ("ReplicaSet", "web-7d4b9c8f5")
    assert p.images == {"nginx": "nginx:1.25.4", "log-shipper": "cr.fluentbit.io/fluent/fluent-bit:3.0.4"}
    assert p.annotations == {} and p.labels["pod-template-hash"] == "7d4b9c8f5" and p.static_uid == ""
    assert p.statuses == (
        ContainerStatus("1f0b8e7d5c3a29f4e6b1d08c7a5e3f2b9d4c6a8e0f1b3d5c7e9a2b4d6f8e0a1c", "containerd", "log-shipper"),
        ContainerStatus("3f4c1e5d2b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a493827160", "containerd", "nginx"),
        ContainerStatus("b7e1c4d2a9f05e3c8b6d1a7f2e4c9b0d5a3f8e6c1b7d4a2e9f0c5b3d8a6e1f7c", "containerd", "nginx"))


def test_parse_pod_init_containers_static_and_pending():
    pg = parse_pod(pf.load("pod-crio-statefulset"), AnnotationFilter())
    assert [s.name for s in pg.statuses] == ["fix-permissions", "postgres"] and pg.statuses[0].runtime == "cri-o"
    etcd = parse_pod(pf.load("pod-static-mirror"), AnnotationFilter())
    assert etcd.static_uid == "8a1f2b3c4d5e6f708192a3b4c5d6e7f8" and etcd.service_account == ""
    pending = parse_pod(pf.load("pod-pending-deployment"), AnnotationFilter())
    assert pending.statuses == () and pending.images == {"api": "ghcr.io/example/api:2.0.0"}


def test_parse_pod_without_owner_or_status():
    bare = {"metadata": {"name": "debug", "namespace": "default", "uid": "u-1"}, "spec": {"containers": [
        {"name": "sh", "image": "busybox"}]}}
    p = parse_pod(bare, AnnotationFilter())
    assert (p.owner_kind, p.owner_name, p.node, p.statuses, p.labels) == ("", "", "", (), {})


def test_first_owner_when_none_is_controller():
    pod = pf.load("pod-containerd-deployment")
    pod["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "name": "cm", "apiVersion": "v1", "uid": "x"},
                                          {"kind": "Foo", "name": "bar", "apiVersion": "v1", "uid": "y"}]
    assert parse_pod(pod, AnnotationFilter()).owner_kind == "ConfigMap"
    pod["metadata"]["ownerReferences"][1]["controller"] = True
    assert parse_pod(pod, AnnotationFilter()).owner_kind == "Foo"


@pytest.mark.parametrize("patterns,expected", [
    ((), {}),
    (("prometheus.io/scrape",), {"prometheus.io/scrape": "true"}),
    (("prometheus.io/*",), {"prometheus.io/scrape": "true", "prometheus.io/port": "9113"}),
    (("prometheus.io/*", "kubectl.kubernetes.io/restartedAt"),
     {"prometheus.io/scrape": "true", "prometheus.io/port": "9113", "kubectl.kubernetes.io/restartedAt": "2024-05-13T22:04:11Z"}),
    (("nothing/*", " "), {}),
])
def test_annotation_allow_list(patterns, expected):
    assert parse_pod(pf.load("pod-containerd-deployment"), AnnotationFilter(patterns)).annotations == expected


@pytest.mark.parametrize("owner,labels,expected", [
    (("ReplicaSet", "web-7d4b9c8f5"), {"pod-template-hash": "7d4b9c8f5"}, ("Deployment", "web")),
    (("ReplicaSet", "my-app-v2-5f7b8c9d4"), {"pod-template-hash": "5f7b8c9d4"}, ("Deployment", "my-app-v2")),
    (("ReplicaSet", "legacy"), {}, ("ReplicaSet", "legacy")),
    (("ReplicaSet", "web-abc"), {"pod-template-hash": "zzz"}, ("ReplicaSet", "web-abc")),
    (("Job", "nightly-report-28605720"), {}, ("Job", "nightly-report-28605720")),
    (("StatefulSet", "postgres"), {}, ("StatefulSet", "postgres")),
    (("", ""), {}, ("", "")),
])
def test_fallback_workload(owner, labels, expected):
    assert fallback_workload(*owner, labels) == expected


def test_owner_and_namespace_records():
    rs, _, job = [o for o in pf.cluster_objects() if o["kind"] != "Namespace"]
    assert tuple(parse_owner(rs)) == ("shop", "web-7d4b9c8f5", "Deployment", "web")
    assert tuple(parse_owner(job)) == ("batch", "nightly-report-28605720", "CronJob", "nightly-report")
    ns = parse_namespace(pf.cluster_objects()[0])
    assert ns.name == "shop" and ns.labels["team"] == "storefront"


def test_context_record_fields_follow_the_schema_order():
    ctx = K8sContext("ns", "pod", "uid", {"a": "b"}, {}, "c", "img", "node", "Deployment", "web", "sa", "id", "containerd")
    assert list(ctx.record()) == ["namespace", "pod", "pod_uid", "labels", "annotations", "container_name", "image",
                                  "node", "workload_kind", "workload_name", "service_account"]
    record = ctx.enrichment()
    assert record["container_id"] == "id" and record["container_runtime"] == "containerd"
    pod_level = K8sContext("ns", "pod", "uid", {}, {}, "", "", "node", "", "", "sa")
    assert pod_level.enrichment("abc", "cri-o")["container_id"] == "abc"
    record["k8s"]["labels"]["x"] = "y"  # records are copies: the shared labels stay untouched
    assert ctx.labels == {"a": "b"}


def test_context_dict_round_trip():
    ctx = K8sContext("ns", "pod", "uid", {"a": "b"}, {"x": "y"}, "c", "img", "node", "Job", "j", "sa", "id", "cri-o")
    data = ctx.as_dict()
    assert json.loads(json.dumps(data)) == data and K8sContext.from_dict(data) == ctx
