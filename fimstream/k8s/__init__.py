"""Kubernetes metadata for enrichment: a list+watch pod cache keyed by container id and pod uid.

    from fimstream.k8s import MetadataCache, K8sSettings
    cache = MetadataCache(K8sSettings.from_env(), listeners=[on_change]).start()
    cache.mode            # "kubernetes", or "host" (no kubeconfig / not in a cluster: serves nothing)
    cache.resolve(parse_cgroup(cgroup))  -> Resolution(context, pending)
"""
from fimstream.k8s.cache import Change, MetadataCache, Resolution
from fimstream.k8s.client import K8sSettings, connect
from fimstream.k8s.model import K8sContext
from fimstream.k8s.reflector import Reflector, ReflectorStats, WatchSettings

__all__ = ["Change", "K8sContext", "K8sSettings", "MetadataCache", "Reflector", "ReflectorStats", "Resolution",
           "WatchSettings", "connect"]
