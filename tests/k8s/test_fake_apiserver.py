"""The fake API server speaks the API as the official client expects it (typed models, Watch helper)."""
from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s import podfixtures as pf


@pytest.fixture
def v1(cluster, kubeconfig):
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client.CoreV1Api(api_client)
    api_client.close()


def test_fixtures_deserialize_into_the_clients_models(v1, cluster):
    pods = v1.list_pod_for_all_namespaces()
    assert len(pods.items) == 6 and int(pods.metadata.resource_version) == cluster.resource_version
    by_name = {p.metadata.name: p for p in pods.items}
    web = by_name["web-7d4b9c8f5-x2vqp"]
    assert web.metadata.owner_references[0].kind == "ReplicaSet"
    assert web.status.container_statuses[1].container_id.startswith("containerd://")
    assert by_name["postgres-0"].status.init_container_statuses[0].container_id.startswith("cri-o://")
    assert by_name["api-6c8d9f7b4-tqx8n"].status.container_statuses[0].container_id is None
    apps = client.AppsV1Api(v1.api_client)
    assert {r.metadata.name for r in apps.list_replica_set_for_all_namespaces().items} == {"web-7d4b9c8f5",
                                                                                          "api-6c8d9f7b4"}
    job = client.BatchV1Api(v1.api_client).read_namespaced_job("nightly-report-28605720", "batch")
    assert job.metadata.owner_references[0].kind == "CronJob"


def test_namespaced_list_get_and_selectors(v1):
    assert [p.metadata.name for p in v1.list_namespaced_pod("data").items] == ["postgres-0"]
    assert v1.read_namespaced_pod("postgres-0", "data").spec.node_name == "worker-2"
    on_worker1 = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=worker-1").items
    assert {p.metadata.name for p in on_worker1} == {"web-7d4b9c8f5-x2vqp", "node-exporter-7hkqz",
                                                      "nightly-report-28605720-m4kzt"}
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces(
        label_selector="app in (api,postgres),app!=postgres").items] == ["api-6c8d9f7b4-tqx8n"]
    assert len(v1.list_pod_for_all_namespaces(label_selector="!pod-template-hash").items) == 4
    assert v1.read_namespace("shop").metadata.labels["team"] == "storefront"
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("nope", "data")
    assert e.value.status == 404 and json.loads(e.value.body)["reason"] == "NotFound"


def test_create_and_delete_through_the_client(v1, cluster):
    body = pf.clone(pf.load("pod-pending-deployment"), "api-6c8d9f7b4-zz9zz")
    created = v1.create_namespaced_pod("shop", body)
    assert created.metadata.uid == body["metadata"]["uid"] and int(created.metadata.resource_version) > 0
    assert cluster.get("pods", "shop", "api-6c8d9f7b4-zz9zz")["spec"]["nodeName"] == "worker-2"
    v1.delete_namespaced_pod("api-6c8d9f7b4-zz9zz", "shop")
    assert "api-6c8d9f7b4-zz9zz" not in {p.metadata.name for p in v1.list_namespaced_pod("shop").items}


def test_watch_with_the_official_watch_helper(v1, cluster):
    rv = v1.list_namespaced_pod("shop").metadata.resource_version
    pod = pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-watch")
    cluster.create(pod)
    cluster.modify("pods", "shop", "web-7d4b9c8f5-watch", lambda p: p["metadata"]["labels"].update(x="y"))
    cluster.delete("pods", "shop", "web-7d4b9c8f5-watch")
    cluster.create(pf.clone(pf.load("pod-crio-statefulset"), "other-ns"))  # another namespace: not seen
    seen = []
    for event in watch.Watch().stream(v1.list_namespaced_pod, "shop", resource_version=rv, timeout_seconds=1):
        seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.labels.get("x")))
    assert seen == [("ADDED", "web-7d4b9c8f5-watch", None), ("MODIFIED", "web-7d4b9c8f5-watch", "y"),
                    ("DELETED", "web-7d4b9c8f5-watch", "y")]


def test_watch_without_resource_version_starts_with_synthetic_adds(v1):
    events = list(watch.Watch().stream(v1.list_pod_for_all_namespaces, timeout_seconds=1))
    assert len(events) == 6 and {e["type"] for e in events} == {"ADDED"}


def test_watch_timeout_ends_the_stream(v1):
    t = time.monotonic()
    assert list(watch.Watch().stream(v1.list_namespaced_pod, "nobody", resource_version="1", timeout_seconds=1)) == []
    assert 0.9 < time.monotonic() - t < 3


def test_too_old_resource_version_is_410(v1, cluster):
    old = v1.list_pod_for_all_namespaces().metadata.resource_version
    cluster.create(pf.clone(pf.load("pod-containerd-deployment"), "web-7d4b9c8f5-new"))
    cluster.compact()
    with pytest.raises(ApiException) as e:  # ERROR event {"code": 410} in the stream
        list(watch.Watch().stream(v1.list_pod_for_all_namespaces, resource_version=old, timeout_seconds=1))
    assert e.value.status == 410
    with pytest.raises(ApiException) as e:  # an exact list at a compacted version
        v1.list_pod_for_all_namespaces(resource_version=old, resource_version_match="Exact")
    assert e.value.status == 410 and json.loads(e.value.body)["reason"] == "Expired"


def test_list_resource_version_semantics(v1, cluster):
    before = v1.list_pod_for_all_namespaces().metadata.resource_version
    cluster.delete("pods", "data", "postgres-0")
    exact = v1.list_pod_for_all_namespaces(resource_version=before, resource_version_match="Exact")
    assert exact.metadata.resource_version == before and "postgres-0" in {p.metadata.name for p in exact.items}
    newer = v1.list_pod_for_all_namespaces(resource_version=before, resource_version_match="NotOlderThan")
    assert int(newer.metadata.resource_version) > int(before) and len(newer.items) == 5
    assert len(v1.list_pod_for_all_namespaces(resource_version="0").items) == 5
    with pytest.raises(ApiException) as e:
        v1.list_pod_for_all_namespaces(resource_version="999999", resource_version_match="NotOlderThan")
    assert e.value.status == 504


def test_bookmarks_and_raw_event_shapes(v1, cluster):
    cluster.bookmark_interval = 0.1
    resp = v1.list_pod_for_all_namespaces(watch=True, allow_watch_bookmarks=True, timeout_seconds=1,
                                          resource_version=str(cluster.resource_version), _preload_content=False)
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}})
    lines = [json.loads(line) for line in watch.watch.iter_resp_lines(resp) if line]
    bookmarks = [e for e in lines if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[-1]["object"]["kind"] == "Pod"
    assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == str(cluster.resource_version)
    assert resp.headers["Transfer-Encoding"] == "chunked"


def test_pagination_is_a_consistent_snapshot(v1, cluster):
    first = v1.list_pod_for_all_namespaces(limit=4)
    assert len(first.items) == 4 and first.metadata._continue
    cluster.create(pf.clone(pf.load("pod-containerd-deployment"), "zzz-created-between-pages", namespace="zzz"))
    rest = v1.list_pod_for_all_namespaces(limit=4, _continue=first.metadata._continue)
    assert len(rest.items) == 2 and not rest.metadata._continue  # the new pod is not in this snapshot
    assert rest.metadata.resource_version == first.metadata.resource_version


def test_unauthorized_without_the_token(cluster):
    cfg = client.Configuration(host=cluster.url)
    with client.ApiClient(cfg) as api_client:
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(api_client).list_namespace()
    assert e.value.status == 401
