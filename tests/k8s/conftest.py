"""Fixtures: a fake API server holding the fixture cluster, and metadata caches pointed at it."""
from __future__ import annotations

import pytest

from fimstream.k8s import K8sSettings, MetadataCache, WatchSettings
from tests.k8s import podfixtures
from tests.k8s.fake_apiserver import FakeApiServer

# Short timeouts so reconnects and resyncs happen within a test, not in minutes.
FAST = dict(backoff_initial=0.05, backoff_max=0.5, watch_timeout=(20, 30), resync_seconds=0)


@pytest.fixture
def api():
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def cluster(api):
    """The fake server with the fixture namespaces, owners and pods in it."""
    for obj in podfixtures.cluster_objects():
        api.create(obj)
    for pod in podfixtures.all_pods():
        api.create(pod)
    return api


@pytest.fixture
def kubeconfig(api, tmp_path):
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def make_cache(kubeconfig):
    caches: list[MetadataCache] = []

    def make(listeners=(), start=True, sync=True, watch: dict | None = None, **settings) -> MetadataCache:
        s = K8sSettings(kubeconfig=str(kubeconfig), watch=WatchSettings(**{**FAST, **(watch or {})}), **settings)
        cache = MetadataCache(s, listeners=listeners)
        caches.append(cache)
        if start:
            cache.start()
            if sync:
                assert cache.wait_synced(10), cache.stats()
        return cache

    yield make
    for c in caches:
        c.stop()
