"""k8s/: render with `kubectl kustomize` and validate every object against the Kubernetes 1.32 schemas."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
RULES = ROOT / "rules"
KUBE_VERSION = "1.32.0"
STAGES = ("collector", "enricher", "detector", "sink")

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S / "base")


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return render(K8S / "overlays" / "dev")


@pytest.fixture(scope="module")
def with_deny(tmp_path_factory) -> list[dict]:
    d = tmp_path_factory.mktemp("deny")
    # What an overlay using the component looks like (kustomize wants relative paths).
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "base", d)],
        "components": [os.path.relpath(K8S / "components" / "fanotify-deny", d)]}))
    return render(d)


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def container(objs: list[dict], stage: str) -> dict:
    kind = "DaemonSet" if stage == "collector" else "Deployment"
    return find(objs, kind, f"fimstream-{stage}")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("which", ["base", "dev", "with_deny"])
def test_every_rendered_object_is_valid(which, request):
    objs = request.getfixturevalue(which)
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_the_validator_catches_mistakes(base):
    ds = find(base, "DaemonSet", "fimstream-collector")
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_stage_commands_and_settings(base):
    config = next(o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fimstream-config"))
    assert config["data"]["FIMSTREAM_RULES"] == "/etc/fimstream/rules"
    assert "FIMSTREAM_KAFKA_BOOTSTRAP" in config["data"]
    for stage in STAGES:
        c = container(base, stage)
        assert c["command"] == ["fimstream", stage, "run"]
        refs = {e.get("configMapRef", e.get("secretRef"))["name"] for e in c["envFrom"]}
        assert config["metadata"]["name"] in refs
        assert any(r.startswith("fimstream-kafka-") for r in refs)  # hashed generator names resolved
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["image"].startswith("ghcr.io/fimstream/fimstream:")
    sink_refs = {e["secretRef"]["name"] for e in container(base, "sink")["envFrom"] if "secretRef" in e}
    assert any(r.startswith("fimstream-clickhouse-") for r in sink_refs)
    secrets = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in base if o["kind"] == "Secret"}
    assert set(secrets) == {"fimstream-kafka", "fimstream-clickhouse"}
    assert "FIMSTREAM_CLICKHOUSE_URL" in secrets["fimstream-clickhouse"]["data"]
    for stage in ("enricher", "detector"):  # credentials only where needed
        assert not any(r.startswith("fimstream-clickhouse") for r in
                       (e.get("secretRef", {}).get("name", "") for e in container(base, stage)["envFrom"]))


def test_collector_daemonset_is_least_privilege(base):
    ds = find(base, "DaemonSet", "fimstream-collector")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert pod["hostPID"] is True and not sc.get("privileged")
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = set(sc["capabilities"]["add"])
    assert {"BPF", "PERFMON", "SYS_RESOURCE", "KILL"} <= added
    assert added <= {"BPF", "PERFMON", "SYS_RESOURCE", "KILL", "SYS_PTRACE"}  # no SYS_ADMIN without deny rules
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    host = {mounts_path: volumes[m["name"]].get("hostPath", {}).get("path") for mounts_path, m in mounts.items()}
    assert host["/sys/kernel/btf"] == "/sys/kernel/btf" and mounts["/sys/kernel/btf"]["readOnly"]
    assert host["/sys/kernel/tracing"] == "/sys/kernel/tracing"
    assert host["/sys/fs/bpf"] == "/sys/fs/bpf"
    assert host["/host/proc"] == "/proc" and mounts["/host/proc"]["readOnly"]
    assert host["/host/sys/fs/cgroup"] == "/sys/fs/cgroup"
    assert volumes[mounts["/etc/fimstream/rules"]["name"]]["configMap"]["name"].startswith("fimstream-rules-")
    env = {e["name"]: e for e in c["env"]}
    assert env["FIMSTREAM_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["serviceAccountName"] == "fimstream-collector"
    assert {"operator": "Exists"} in pod["tolerations"]


def test_deny_component_adds_sys_admin(with_deny):
    sc = container(with_deny, "collector")["securityContext"]
    assert "SYS_ADMIN" in sc["capabilities"]["add"] and not sc.get("privileged")


def test_rbac_is_read_only_on_four_resources(base):
    role = find(base, "ClusterRole", "fimstream-metadata-reader")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r in [("", "pods"), ("", "namespaces"), ("apps", "replicasets"),
                                               ("batch", "jobs")] for v in ("get", "list", "watch")}
    binding = find(base, "ClusterRoleBinding", "fimstream-metadata-reader")
    assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("fimstream-collector", "fimstream"), ("fimstream-enricher", "fimstream")}
    sas = {o["metadata"]["name"]: o for o in base if o["kind"] == "ServiceAccount"}
    assert set(sas) == {"fimstream-collector", "fimstream-enricher", "fimstream-pipeline"}
    assert sas["fimstream-pipeline"]["automountServiceAccountToken"] is False
    assert not [o for o in base if o["kind"] in ("Role", "RoleBinding")]
    for stage, sa in [("enricher", "fimstream-enricher"), ("detector", "fimstream-pipeline"),
                      ("sink", "fimstream-pipeline")]:
        spec = find(base, "Deployment", f"fimstream-{stage}")["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == sa
        c = spec["containers"][0]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and spec["securityContext"]["runAsNonRoot"]


def test_rules_configmap_is_built_from_rules_dir(base):
    cm = next(o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fimstream-rules-"))
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in RULES.iterdir() if p.suffix in (".yaml", ".yml")}
    assert cm["data"] == on_disk, ("rules/Kustomization must list exactly the rule files in rules/: "
                                   f"missing {sorted(set(on_disk) - set(cm['data']))}, "
                                   f"extra {sorted(set(cm['data']) - set(on_disk))}")
    assert cm["metadata"]["namespace"] == "fimstream"


def test_every_object_is_namespaced_or_cluster_scoped_on_purpose(base):
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in base:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "fimstream", obj["metadata"]["name"]


def test_dev_overlay_points_at_its_in_cluster_kafka(dev):
    config = next(o for o in dev if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fimstream-config"))
    host, port = config["data"]["FIMSTREAM_KAFKA_BOOTSTRAP"].split(":")
    svc = find(dev, "Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    kafka = find(dev, "Deployment", "kafka")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in kafka["containers"][0]["env"]}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{host}:{port}"
    assert kafka["enableServiceLinks"] is False
    url = next(o for o in dev if o["kind"] == "Secret" and o["metadata"]["name"].startswith("fimstream-clickhouse"))
    assert "FIMSTREAM_CLICKHOUSE_URL" in url["data"]
    find(dev, "Service", "clickhouse")
    for stage in STAGES:
        assert container(dev, stage)["image"] == "ghcr.io/fimstream/fimstream:dev"
    assert find(dev, "Deployment", "fimstream-enricher")["spec"]["replicas"] == 1
