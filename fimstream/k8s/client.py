"""Settings of the Kubernetes metadata watch, and finding the API server (or deciding on host mode).

Where the API server is, in order: an explicit kubeconfig (setting or $KUBECONFIG), the in-cluster
service account (KUBERNETES_SERVICE_HOST + token), ~/.kube/config. None of them: host mode, said once
and loudly, and the cache serves nothing. FIMSTREAM_K8S=off forces host mode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from fimstream.k8s.reflector import WatchSettings


@dataclass
class K8sSettings:
    enabled: str = "auto"  # "auto": use an API server if one is configured; "off": host mode
    kubeconfig: str | None = None  # a path (or several, ':'-separated); None: $KUBECONFIG, in-cluster, ~/.kube
    context: str | None = None  # kubeconfig context; None: current-context
    node_name: str | None = None  # node-scoped: only this node's pods (fieldSelector spec.nodeName=...)
    annotations: tuple[str, ...] = ()  # annotation keys to keep; `prefix*` keeps a prefix. Others dropped.
    watch_namespaces: bool = True  # namespace labels, for namespace-scoped rules
    resolve_owners: bool = True  # watch ReplicaSets and Jobs: Deployment / CronJob of a pod
    tombstone_seconds: float = 300.0  # a deleted pod's metadata still answers late events this long
    forget_seconds: float = 3600.0  # and its uid is remembered as deleted (not "pending") this long
    watch: WatchSettings = field(default_factory=WatchSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, node_name: str | None = None,
                 **overrides) -> "K8sSettings":
        """FIMSTREAM_K8S (auto|off), FIMSTREAM_K8S_ANNOTATIONS (comma-separated allow-list),
        FIMSTREAM_K8S_RESYNC_SECONDS, KUBECONFIG. `node_name` (the collector passes FIMSTREAM_NODE_NAME)
        makes the pod watch node-scoped; the enricher leaves it None and sees the whole cluster."""
        env = os.environ if env is None else env
        settings = cls(
            enabled=env.get("FIMSTREAM_K8S", "auto").strip().lower() or "auto",
            kubeconfig=env.get("KUBECONFIG") or None,
            node_name=node_name or None,
            annotations=tuple(a.strip() for a in env.get("FIMSTREAM_K8S_ANNOTATIONS", "").split(",") if a.strip()),
        )
        if env.get("FIMSTREAM_K8S_RESYNC_SECONDS"):
            settings.watch.resync_seconds = float(env["FIMSTREAM_K8S_RESYNC_SECONDS"])
        for key, value in overrides.items():
            setattr(settings, key, value)
        if settings.enabled not in ("auto", "off"):
            raise ValueError(f"FIMSTREAM_K8S must be 'auto' or 'off', not {settings.enabled!r}")
        return settings


def connect(settings: K8sSettings) -> tuple[k8s_client.ApiClient | None, str]:
    """(api client, where it points) or (None, why host mode)."""
    if settings.enabled == "off":
        return None, "Kubernetes disabled (FIMSTREAM_K8S=off)"
    cfg = k8s_client.Configuration()
    explicit = settings.kubeconfig
    try:
        if explicit:
            k8s_config.load_kube_config(config_file=explicit, context=settings.context, client_configuration=cfg)
            where = f"kubeconfig {explicit}"
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)
                where = "in-cluster service account"
            except ConfigException as in_cluster_error:
                default = Path("~/.kube/config").expanduser()
                if not default.is_file():
                    return None, (f"no Kubernetes API configured: not in a cluster ({in_cluster_error}) and "
                                  f"no kubeconfig ($KUBECONFIG unset, {default} missing)")
                k8s_config.load_kube_config(config_file=str(default), context=settings.context,
                                            client_configuration=cfg)
                where = f"kubeconfig {default}"
    except (ConfigException, OSError) as e:
        raise ConfigException(f"Kubernetes configuration unusable: {e}") from e
    return k8s_client.ApiClient(cfg), f"{where} -> {cfg.host}"
