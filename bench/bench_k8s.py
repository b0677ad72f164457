"""Kubernetes metadata cache: memory per 1,000 pods, lookup cost with 10,000 pods, pod ADDED -> ready.

    .venv/bin/python bench/bench_k8s.py [--pods 10000] [--nodes 10] [--adds 200]

The API server is tests/k8s/fake_apiserver.py in its own process (so its copy of the objects does not
count), holding `--pods` pods cloned from the real-shaped fixtures (Deployments, StatefulSets,
DaemonSets, CronJob pods; containerd, cri-o, docker), spread over namespaces and `--nodes` nodes, plus the
ReplicaSets and Jobs that own them. The cache under test runs here, through the real `kubernetes` client.

- memory: Python heap (tracemalloc) held by a synced cache, node-scoped (pods/nodes pods) and
  cluster-wide (all pods); the slope between the two is the cost per 1,000 pods.
- lookups: resolve() of container ids, pod uids, misses, and parse_cgroup()+resolve() as the enricher does.
- ADDED -> ready: pods created through the API; the server stamps each with its commit time, a cache
  listener notes when the pod's record is served. Both clocks are this machine's wall clock.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402

from fimstream.containers import parse_cgroup  # noqa: E402
from fimstream.k8s import K8sSettings, MetadataCache, WatchSettings  # noqa: E402
from tests.k8s import podfixtures as pf  # noqa: E402
from tests.k8s.fake_apiserver import FakeApiServer  # noqa: E402

TEMPLATES = ["pod-containerd-deployment", "pod-crio-statefulset", "pod-docker-daemonset", "pod-containerd-cronjob"]


def make_cluster(pods: int, nodes: int) -> tuple[list[dict], list[dict]]:
    """(objects to load, the pods) — about 20 replicas per workload, 50 namespaces."""
    objects: list[dict] = []
    made: list[dict] = []
    namespaces = [f"team-{i:02d}" for i in range(50)]
    for ns in namespaces:
        objects.append({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "team": ns}}})
    for i in range(pods):
        workload = i // 20
        template = TEMPLATES[workload % len(TEMPLATES)]
        ns = namespaces[workload % len(namespaces)]
        app = f"app{workload}"
        pod = pf.clone(pf.load(template), "tmp", namespace=ns, node=f"node-{i % nodes:02d}")
        meta = pod["metadata"]
        owner = meta["ownerReferences"][0]
        if owner["kind"] == "ReplicaSet":
            rs = f"{app}-{workload:05x}f5"
            owner["name"], meta["name"] = rs, f"{rs}-{i:05d}"
            meta["labels"] = {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": ns,
                              "pod-template-hash": f"{workload:05x}f5", "tier": "frontend"}
            if i % 20 == 0:
                objects.append({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                    "name": rs, "namespace": ns, "labels": meta["labels"], "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "controller": True,
                         "uid": f"00000000-0000-4000-8000-{workload:012d}"}]}, "spec": {"selector": {}}})
        elif owner["kind"] == "StatefulSet":
            owner["name"], meta["name"] = app, f"{app}-{i % 20}"
            meta["labels"] = {"app": app, "controller-revision-hash": f"{app}-5c9f8d7b6d",
                              "statefulset.kubernetes.io/pod-name": meta["name"],
                              "apps.kubernetes.io/pod-index": str(i % 20)}
        elif owner["kind"] == "DaemonSet":
            owner["name"], meta["name"] = app, f"{app}-{i:05d}"
            meta["labels"] = {"app.kubernetes.io/name": app, "controller-revision-hash": "6f8b7c9d54",
                              "pod-template-generation": "3"}
        else:  # CronJob -> Job -> pod: one Job per run
            job = f"{app}-{28605720 + i}"
            owner["name"], meta["name"] = job, f"{job}-m4kzt"
            meta["labels"] = {"batch.kubernetes.io/job-name": job, "job-name": job,
                              "controller-uid": f"00000000-0000-4000-9000-{i:012d}"}
            objects.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                "name": job, "namespace": ns, "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "CronJob", "name": app, "controller": True,
                     "uid": f"00000000-0000-4000-a000-{workload:012d}"}]}, "spec": {"template": {}}})
        meta["name"] = meta["name"].lower()
        made.append(pod)
    return objects + made, made


def start_server(objects: list[dict], tmp: Path) -> tuple[subprocess.Popen, Path]:
    data = tmp / "objects.json"
    data.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}))
    kubeconfig = tmp / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "tests.k8s.fake_apiserver", "--kubeconfig", str(kubeconfig),
                             "--bookmark-interval", "5", "--stamp-commits", str(data)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # printed once every object is loaded
    if "fake apiserver on" not in line:
        raise RuntimeError(f"fake apiserver did not start: {line!r}")
    return proc, kubeconfig


def heap_of_cache(kubeconfig: Path, node: str | None, listeners=()) -> tuple[MetadataCache, int, int, float]:
    """A synced cache and (bytes it holds, peak bytes while listing, seconds to sync)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    cache = MetadataCache(K8sSettings(kubeconfig=str(kubeconfig), node_name=node,
                                      annotations=(FakeApiServer.STAMP,) if listeners else (),
                                      watch=WatchSettings(resync_seconds=0)), listeners=listeners).start()
    assert cache.wait_synced(300), cache.stats()
    took = time.perf_counter() - t
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return cache, held - base, peak - base, took


def per_op(fn, items, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--adds", type=int, default=200)
    args = ap.parse_args()
    random.seed(7)
    objects, pods = make_cluster(args.pods, args.nodes)
    containers = sum(len(pf.container_ids(p)) for p in pods)
    print(f"cluster: {len(pods)} pods ({containers} running containers), {args.nodes} nodes, "
          f"{len(objects) - len(pods)} namespaces/ReplicaSets/Jobs")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        server, kubeconfig = start_server(objects, Path(tmp))
        print(f"fake apiserver loaded in {time.perf_counter() - t:.1f}s")
        try:
            run(args, pods, kubeconfig)
        finally:
            server.terminate()
            server.wait()


def run(args, pods: list[dict], kubeconfig: Path) -> None:
    per_node = args.pods // args.nodes
    # One-time costs (imports, the client's request validators) are not the cache's: pay them first;
    # this untraced run also gives the plain time to list and index the whole cluster.
    warm = MetadataCache(K8sSettings(kubeconfig=str(kubeconfig), node_name="node-00")).start()
    warm.wait_synced(300)
    warm.stop()
    t, cpu = time.perf_counter(), time.process_time()
    timed = MetadataCache(K8sSettings(kubeconfig=str(kubeconfig), watch=WatchSettings(resync_seconds=0))).start()
    timed.wait_synced(300)
    print(f"initial list of {timed.stats()['pods']} pods (+ namespaces, ReplicaSets, Jobs), parsed and indexed: "
          f"{time.perf_counter() - t:.2f}s wall (includes the fake server's pure-Python serving), "
          f"{time.process_time() - cpu:.2f}s CPU in the cache's process")
    timed.stop()
    del warm, timed
    # ---------------------------------------------------------------------------------- memory
    node_cache, node_held, _, node_sync = heap_of_cache(kubeconfig, "node-00")
    node_pods = node_cache.stats()["pods"]
    node_cache.stop()
    del node_cache
    cache, held, peak, sync = heap_of_cache(kubeconfig, None)
    stats = cache.stats()
    slope = (held - node_held) / ((stats["pods"] - node_pods) / 1000)
    print(f"\nmemory (Python heap held by the synced cache, tracemalloc):")
    print(f"  node-scoped, {node_pods} pods:   {node_held / 2**20:6.1f} MiB")
    print(f"  cluster-wide, {stats['pods']} pods: {held / 2**20:6.1f} MiB  (peak while listing {peak / 2**20:.1f} MiB)")
    print(f"  => {slope / 2**20:.2f} MiB per 1,000 pods ({slope / 1000:.0f} B/pod; "
          f"{stats['containers']} container ids, {stats['owners']} owner records kept)")
    assert node_pods == per_node, (node_pods, per_node)

    # --------------------------------------------------------------------------------- lookups
    refs_container, refs_pod, refs_miss, paths = [], [], [], []
    for i, pod in enumerate(pods):
        name = next(iter(pf.container_ids(pod)))
        driver = "systemd" if i % 2 else "cgroupfs"
        path = pf.cgroup_path(pod, name, driver).encode()
        paths.append(path)
        refs_container.append(parse_cgroup(path))
        refs_pod.append(parse_cgroup(pf.cgroup_path(pod, None, driver).encode() + b"/cri-containerd-" + b"0" * 64 +
                                     b".scope"))
    for i in range(len(pods)):
        refs_miss.append(parse_cgroup(b"/system.slice/docker-%064x.scope" % i))
    for lst in (refs_container, refs_pod, refs_miss, paths):
        random.shuffle(lst)
    assert all(cache.resolve(r).context for r in refs_container)
    resolve = cache.resolve
    print(f"\nlookups with {stats['pods']} pods (best of 5 passes over {len(pods)} distinct keys, one thread):")
    print(f"  by_container_id:                        {per_op(cache.by_container_id, [r.container_id for r in refs_container]):7.0f} ns")
    print(f"  resolve(ref) container known:           {per_op(resolve, refs_container):7.0f} ns")
    print(f"  resolve(ref) pod known, container not:  {per_op(resolve, refs_pod):7.0f} ns")
    print(f"  resolve(ref) not Kubernetes (miss):     {per_op(resolve, refs_miss):7.0f} ns")
    print(f"  parse_cgroup(bytes)+resolve (memoized): {per_op(lambda p: resolve(parse_cgroup(p)), paths):7.0f} ns")
    from fimstream.containers import _parse_path
    print(f"  cgroup path parse, uncached:            {per_op(lambda p: _parse_path(p.decode()), paths[:2000]):7.0f} ns")
    cache.stop()

    # ----------------------------------------------------------------------------- ADDED -> ready
    latencies: list[float] = []
    pending: dict[str, threading.Event] = {}

    def on_change(change) -> None:
        if change.kind == "pod" and change.context is not None and change.key in pending:
            stamp = change.context.annotations.get(FakeApiServer.STAMP)
            if stamp and not pending[change.key].is_set():
                latencies.append(time.time() - float(stamp))
                pending[change.key].set()

    live, _, _, _ = heap_of_cache(kubeconfig, None, listeners=[on_change])
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    template = pf.load("pod-containerd-deployment")
    for i in range(args.adds):
        pod = pf.clone(template, f"latency-{i:04d}", namespace="team-00")
        pending[pod["metadata"]["uid"]] = done = threading.Event()
        api.create_namespaced_pod("team-00", pod)
        if not done.wait(10):
            raise RuntimeError(f"pod {i} not ready within 10s")
        time.sleep(0.005)
    live.stop()
    ms = sorted(x * 1000 for x in latencies)
    print(f"\npod ADDED on the API server -> record served by the cache ({len(ms)} pods, {stats['pods']} in cache):")
    print(f"  p50 {statistics.median(ms):.2f} ms   p90 {ms[int(len(ms) * 0.9)]:.2f} ms   "
          f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms   max {ms[-1]:.2f} ms")


if __name__ == "__main__":
    main()
