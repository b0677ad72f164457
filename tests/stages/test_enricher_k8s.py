"""The enricher in a cluster: metadata from the (fake) Kubernetes API through the leader's watch and the
Faust table; events of a pod not visible yet are held, in order, then resolved or marked unresolved."""
import asyncio
import json

import pytest

from fimstream import kafka
from fimstream.events import raw_event
from fimstream.schemas.codec import Codecs
from tests.k8s import podfixtures as pf
from tests.k8s.fake_apiserver import FakeApiServer
from tests.stages.helpers import consume, produce, running_stage


@pytest.fixture
def api(tmp_path, monkeypatch):
    with FakeApiServer() as server:
        for obj in pf.cluster_objects():
            server.create(obj)
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("FIMSTREAM_ENRICH_HOLD_MS", "4000")
        yield server


def _batch(codecs, pod, container, driver="systemd", n=1):
    cgroup = pf.cgroup_path(pod, container, driver).encode()
    return codecs.raw.encode_batch([raw_event("open", f"/app/f{i}", process={"cgroup": cgroup}) for i in range(n)])


def test_pod_metadata_and_held_events(settings, api):
    codecs = Codecs()
    known = pf.load("pod-containerd-deployment")
    api.create(known)
    late = pf.clone(known, "web-late-1")
    never = pf.clone(known, "web-never-1")

    async def main():
        await kafka.ensure_topics(settings)
        async with running_stage("enricher", settings) as health:
            for _ in range(300):
                if health.snapshot()["counters"].get("k8s_table_entries"):
                    break
                await asyncio.sleep(0.1)
            await produce(settings, settings.topics.raw, [_batch(codecs, known, "nginx")], key=b"known")
            # a pod that starts acting before the API shows it, then appears 1 s later
            await produce(settings, settings.topics.raw, [_batch(codecs, late, "nginx", n=2),
                                                         _batch(codecs, late, "nginx", n=3)], key=b"late")
            await produce(settings, settings.topics.raw, [_batch(codecs, never, "nginx")], key=b"never")
            await asyncio.sleep(1)
            api.create(late)
            msgs = await consume(settings, settings.topics.enriched, 4, timeout=30)
            counters = health.snapshot()["counters"]
        by_key = {}
        for m in msgs:
            by_key.setdefault(m.key, []).append(codecs.enriched.decode_batch(m.value))
        [[k]] = by_key[b"known"]
        assert k["enrich_status"] == "kubernetes"
        assert k["k8s"]["namespace"] == "shop" and k["k8s"]["pod"] == known["metadata"]["name"]
        assert k["k8s"]["workload_kind"] == "Deployment" and k["k8s"]["workload_name"] == "web"
        assert k["k8s"]["labels"]["tier"] == "frontend" and k["k8s"]["container_name"] == "nginx"
        first, second = by_key[b"late"]  # held, then released in order once the pod appeared
        assert [len(first), len(second)] == [2, 3]
        assert all(e["enrich_status"] == "kubernetes" and e["k8s"]["pod"] == "web-late-1" for e in first + second)
        [[n]] = by_key[b"never"]
        assert n["enrich_status"] == "unresolved" and n["k8s"]["pod_uid"] == never["metadata"]["uid"]
        assert counters["hold_held"] >= 3 and counters["hold_expired"] == 1 and counters["hold_resolved"] >= 2
        assert counters["k8s_leader"] == 1
    asyncio.run(main())


def test_restarted_enricher_recovers_metadata_from_the_table_changelog(settings, api):
    """The table is the shared copy: a restarted enricher serves pod metadata from the changelog even
    while the API server is unreachable."""
    codecs = Codecs()
    pod = pf.load("pod-containerd-deployment")
    api.create(pod)

    async def main():
        await kafka.ensure_topics(settings)
        async with running_stage("enricher", settings) as health:
            for _ in range(300):
                if health.snapshot()["counters"].get("k8s_table_entries", 0) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert health.snapshot()["counters"]["k8s_table_entries"] >= 2
        api.stop()  # the new leader cannot list: only the changelog knows the pod
        await produce(settings, settings.topics.raw, [_batch(codecs, pod, "nginx")], key=b"after-restart")
        async with running_stage("enricher", settings):
            [msg] = await consume(settings, settings.topics.enriched, 1, timeout=60)
        [ev] = codecs.enriched.decode_batch(msg.value)
        assert ev["enrich_status"] == "kubernetes" and ev["k8s"]["pod"] == pod["metadata"]["name"]
    asyncio.run(main())
