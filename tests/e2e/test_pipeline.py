"""The whole pipeline as a user runs it: `fimstream up` (embedded broker, real eBPF collector, Faust
enricher, detector, chDB sink), then real file changes under /etc, checked in ClickHouse, on the alerts
topic, and in the traces."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fimstream import kafka
from fimstream.broker import free_port
from fimstream.config import load_settings
from fimstream.schemas.codec import Codecs

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="the collector needs root")]
REPO = Path(__file__).resolve().parents[2]


K8S_FIXTURES = REPO / "tests" / "k8s" / "fixtures"
CGROUP2 = Path("/sys/fs/cgroup/unified")


class FakeCluster:
    """The fake Kubernetes API server (tests/k8s) in its own process, serving real-shaped pods."""

    def __init__(self, tmp: Path):
        self.kubeconfig = tmp / "kubeconfig"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.k8s.fake_apiserver", "--kubeconfig", str(self.kubeconfig),
             str(K8S_FIXTURES / "cluster-objects.json"), str(K8S_FIXTURES / "pod-containerd-deployment.json")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.kubeconfig.exists():  # written once the objects are loaded
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake API server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Pipeline:
    """`fimstream up` in a subprocess with its own state dir, broker port and query port."""

    def __init__(self, state_dir: Path, kubeconfig: Path | None = None):
        self.state_dir = state_dir
        self.env = dict(os.environ, FIMSTREAM_STATE_DIR=str(state_dir),
                        FIMSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                        FIMSTREAM_QUERY_LISTEN=f"127.0.0.1:{free_port()}",
                        FIMSTREAM_RULES=str(REPO / "rules"), FIMSTREAM_PARTITIONS="2",
                        FIMSTREAM_LINGER_MS="20", OTEL_TRACES_EXPORTER="file",
                        FIMSTREAM_TRACE_FILE=str(state_dir / "traces.jsonl"))
        if kubeconfig:
            self.env["KUBECONFIG"] = str(kubeconfig)
        self.settings = load_settings(env=self.env)
        self.proc: subprocess.Popen | None = None

    def fimstream(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fimstream", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, timeout: float = 120) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.state_dir / "up.out", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "fimstream", "up"], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            status = self.fimstream("status")
            if status.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pipeline did not come up:\n{status.stdout}\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        out = []
        for p in sorted((self.state_dir / "logs").glob("*.log")):
            out.append(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def query(self, sql: str) -> list[dict]:
        r = self.fimstream("query", "--format", "json", sql)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]  # JSON lines

    def wait_rows(self, sql: str, at_least: int = 1, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(sql)
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return self.proc.returncode if self.proc else 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = FakeCluster(tmp_path_factory.mktemp("k8s"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, cluster):
    p = Pipeline(tmp_path_factory.mktemp("e2e") / "state", kubeconfig=cluster.kubeconfig)
    p.start()
    yield p
    code = p.stop()
    assert code == 0, f"fimstream up exited with {code}\n{p.logs()}"


def _alerts_from_topic(settings, path: bytes, timeout: float = 30) -> list[dict]:
    codecs = Codecs()

    async def read():
        c = kafka.make_consumer(settings, settings.topics.alerts, group_id=None)
        await c.start()
        found = []
        try:
            deadline = time.monotonic() + timeout
            while not found and time.monotonic() < deadline:
                for part in (await c.getmany(timeout_ms=500)).values():
                    for m in part:
                        found += [a for a in codecs.alert.decode_batch(m.value)
                                  if a["event"]["file"] and path in (a["event"]["file"]["path"],
                                                                     (a["event"]["target"] or {}).get("path"))]
        finally:
            await c.stop()
        return found
    return asyncio.run(read())


def test_etc_change_becomes_rows_alert_and_one_trace(pipeline):
    name = f"fimstream-e2e-{uuid.uuid4().hex[:8]}"
    path = f"/etc/{name}"
    t0 = time.time()
    try:
        with open(path, "w") as f:  # create
            f.write("first\n")
        with open(path, "a") as f:  # then modify
            f.write("second\n")
        rows = pipeline.wait_rows(
            f"SELECT event_type, file_path, process_pid, process_exe, process_comm, trace_id, time "
            f"FROM events WHERE file_path = '{path}' ORDER BY time", at_least=2)
        elapsed = time.time() - t0
        types = [r["event_type"] for r in rows]
        assert "create" in types and ("open" in types or "write" in types), rows
        assert all(r["process_pid"] == os.getpid() for r in rows), rows
        assert all(Path(r["process_exe"]).name.startswith("python") for r in rows), rows
        assert elapsed < 20, f"rows took {elapsed:.1f}s"

        alert_rows = pipeline.wait_rows(
            f"SELECT rule_id, severity, file_path, message FROM alerts WHERE file_path = '{path}'")
        assert "etc_write" in {r["rule_id"] for r in alert_rows}, alert_rows
        topic_alerts = _alerts_from_topic(pipeline.settings, path.encode())
        assert "etc_write" in {a["rule_id"] for a in topic_alerts}

        trace_ids = {r["trace_id"] for r in rows if r["trace_id"]}
        assert trace_ids, rows
        time.sleep(2)  # the file exporter batches spans (0.5 s)
        spans = [json.loads(line) for line in (pipeline.state_dir / "traces.jsonl").read_text().splitlines()]
        for trace_id in trace_ids:
            services = {s["service"] for s in spans if s["trace_id"] == trace_id}
            assert {"fimstream-collector", "fimstream-enricher", "fimstream-detector", "fimstream-sink"} <= services, \
                (trace_id, services)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_corrupt_raw_message_goes_to_dead_letters_and_stream_continues(pipeline):
    settings = pipeline.settings
    codecs = Codecs()
    corrupt = codecs.raw.header + b"\x06not avro at all"

    async def send_and_read():
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            await (await producer.send(settings.topics.raw, corrupt, key=b"e2e-corrupt"))
        finally:
            await producer.stop()
        c = kafka.make_consumer(settings, settings.topics.deadletter, group_id=None)
        await c.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for part in (await c.getmany(timeout_ms=500)).values():
                    for m in part:
                        if m.value == corrupt:
                            return dict(m.headers)
        finally:
            await c.stop()
    headers = asyncio.run(send_and_read())
    assert headers is not None, "corrupt message not in the dead-letter topic"
    assert headers[kafka.H_STAGE] == b"enricher" and headers[kafka.H_ERROR].startswith(b"corrupt raw batch")
    # and the stream goes on
    path = f"/etc/fimstream-e2e-after-{uuid.uuid4().hex[:8]}"
    try:
        Path(path).write_text("x")
        assert pipeline.wait_rows(f"SELECT event_id FROM events WHERE file_path = '{path}'"), pipeline.logs()
    finally:
        os.unlink(path)


def test_stage_killed_mid_stream_loses_nothing(pipeline, tmp_path):
    """kill -9 the enricher and the sink while files are being written: every event reaches ClickHouse
    (at-least-once); replays are duplicates by event_id, which `final` reads collapse."""
    d = Path("/etc") / f"fimstream-e2e-burst-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    n = 300
    try:
        up = json.loads((pipeline.state_dir / "up.json").read_text())
        for i in range(n):
            (d / f"f{i}").write_text("x")
            if i == n // 3:
                os.kill(up["stages"]["enricher"], signal.SIGKILL)
            if i == 2 * n // 3:
                os.kill(up["stages"]["sink"], signal.SIGKILL)
            time.sleep(0.01)
        sql = (f"SELECT count() AS c, uniqExact(event_id) AS u FROM events "
               f"WHERE event_type = 'create' AND startsWith(file_path, '{d}/')")
        deadline = time.monotonic() + 120
        while True:
            try:
                [row] = pipeline.query(sql)
            except AssertionError:  # the sink (query endpoint) is being restarted
                row = {"c": 0, "u": 0}
            if row["u"] >= n or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert row["u"] == n, f"{row['u']} of {n} create events reached the store\n{pipeline.logs()}"
        status = pipeline.fimstream("status")
        assert status.returncode == 0, status.stdout
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_process_in_a_pod_cgroup_gets_pod_metadata(pipeline):
    """A process placed in a cgroup shaped like a kubelet (systemd driver, containerd) container cgroup
    writes a file; its row carries the pod, namespace, labels and workload the API server serves."""
    from tests.k8s import podfixtures as pf
    pod = pf.load("pod-containerd-deployment")
    rel = pf.cgroup_path(pod, "nginx", "systemd")
    cgroup = CGROUP2 / rel.lstrip("/")
    cgroup.mkdir(parents=True, exist_ok=True)
    path = f"/etc/fimstream-e2e-pod-{uuid.uuid4().hex[:8]}"
    try:
        # join the cgroup first, then exec: the collector learns a process's cgroup path at exec
        subprocess.run(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec sh -c "echo x > {path}"'], check=True)
        rows = pipeline.wait_rows(
            f"SELECT container_id, enrich_status, k8s_namespace, k8s_pod, k8s_labels['tier'] AS tier, "
            f"k8s_workload_kind, k8s_workload_name, k8s_container, process_cgroup "
            f"FROM events WHERE file_path = '{path}'")
        assert rows, pipeline.logs()
        row = rows[0]
        assert row["container_id"] == pf.container_ids(pod)["nginx"], row
        assert (row["enrich_status"], row["k8s_namespace"], row["k8s_pod"]) == \
            ("kubernetes", "shop", pod["metadata"]["name"]), row
        assert row["tier"] == "frontend" and row["k8s_container"] == "nginx", row
        assert (row["k8s_workload_kind"], row["k8s_workload_name"]) == ("Deployment", "web"), row
    finally:
        if os.path.exists(path):
            os.unlink(path)
        for d in [cgroup, *cgroup.parents]:
            if d == CGROUP2:
                break
            try:
                d.rmdir()
            except OSError:
                pass
