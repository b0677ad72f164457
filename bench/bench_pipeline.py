"""Pipeline figures with the embedded broker on this machine.

    .venv/bin/python bench/bench_pipeline.py stages  [--events 200000]   # events/s through each stage
    .venv/bin/python bench/bench_pipeline.py latency [--seconds 30 --rate 20]   # syscall -> alert row
    .venv/bin/python bench/bench_pipeline.py idle [--seconds 30]   # each stage's CPU and RSS, nothing happening

`stages`: the raw topic is filled with a realistic event mix (bench_rules.mix: what a host sends with no
kernel filtering, ~2% matching a rule) in batches of `batch_events`; then each stage runs alone as its
own process (`fimstream <stage> run`, the way `fimstream up` runs it) over the whole backlog, and its rate
is read from its heartbeat counters: enricher (raw -> enriched), detector (enriched -> alerts), sink
(enriched + alerts -> chDB). The collector's own rate is bench_collector.py's figure.

`k8s`: the enricher in a cluster: the fake Kubernetes API server (tests/k8s) serves `--pods` pods (10,000
by default, bench_k8s.make_cluster); once the enricher's table holds them all, the raw topic receives
events from processes spread over all those pods' container cgroups; prints the enricher's events/s.

`idle`: `fimstream up` on a host where nothing happens: each stage's CPU (% of a core) and RSS over
`--seconds`, after 30 s of warm-up.

`latency`: `fimstream up` (real collector, all stages), then a process writes files under /etc at a fixed
rate; for each alert row, latency = inserted_at (ClickHouse's clock at insert) - event_time (the kernel's
timestamp of the syscall). Prints p50/p90/p99/max.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_rules import mix  # noqa: E402

from fimstream import kafka  # noqa: E402
from fimstream.broker import EmbeddedBroker, free_port  # noqa: E402
from fimstream.config import load_settings  # noqa: E402
from fimstream.health import read_all  # noqa: E402
from fimstream.schemas.codec import Codecs, _schema_sources  # noqa: E402

STAGE_COUNTER = {"enricher": "events", "detector": "events", "sink": "rows_events"}


def stage_env(bootstrap: str, state: Path, **extra) -> dict:
    prefix = f"b{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, FIMSTREAM_KAFKA_BOOTSTRAP=bootstrap, FIMSTREAM_STATE_DIR=str(state),
               FIMSTREAM_RULES=str(REPO / "rules"), FIMSTREAM_GROUP_PREFIX=prefix,
               FIMSTREAM_QUERY_LISTEN=f"127.0.0.1:{free_port()}", OTEL_TRACES_EXPORTER="none")
    env.update(extra)
    return env


async def fill_raw(settings, events: int, batch: int, cgroups: list[bytes] | None = None) -> int:
    codecs = Codecs()
    raw_fields = [f["name"] for f in _schema_sources()["raw"]["fields"]]
    sample = [{k: e[k] for k in raw_fields} for e in mix(20_000)]
    if cgroups:  # one container per batch, as the collector keys them
        for i, ev in enumerate(sample):
            ev["process"] = {**ev["process"], "cgroup": cgroups[(i // batch) % len(cgroups)]}
    producer = kafka.make_producer(settings)
    await producer.start()
    sender = kafka.Sender(producer)
    sent = 0
    i = 0
    while sent < events:
        n = min(batch, events - sent)
        chunk = [sample[(i + j) % len(sample)] for j in range(n)]
        i += n
        await sender.send(settings.topics.raw, codecs.raw.encode_batch(chunk), key=f"host{sent // batch % 8}".encode())
        sent += n
    await sender.drain()
    await producer.stop()
    return sent


def run_stage(stage: str, env: dict, state: Path, expected: int, timeout: float = 600, warm=None) -> dict:
    """Start one stage over a full backlog; return its rate from heartbeat samples. `warm(counters)`: when
    given, wait until it returns true, then call it with None (to produce the backlog) before measuring."""
    log = open(state / f"{stage}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fimstream", stage, "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    key = STAGE_COUNTER[stage]
    if warm is not None:
        deadline = time.monotonic() + timeout
        while not warm((read_all(state).get(stage) or {}).get("counters", {})):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{stage} did not warm up; see {state / (stage + '.log')}")
            time.sleep(0.5)
        warm(None)
    samples = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.25)
            h = read_all(state).get(stage)
            if proc.poll() is not None:
                raise RuntimeError(f"{stage} exited with {proc.returncode}; see {state / (stage + '.log')}")
            if not h:
                continue
            n = h["counters"].get(key, 0)
            samples.append((h["time"], n))
            if n >= expected:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    moving = [(t, n) for t, n in samples if n > 0]
    if len(moving) < 2:
        return {"stage": stage, "events": samples[-1][1] if samples else 0, "events_per_s": None}
    (t0, n0), (t1, n1) = moving[0], moving[-1]
    return {"stage": stage, "events": n1, "seconds": round(t1 - t0, 2),
            "events_per_s": round((n1 - n0) / (t1 - t0)) if t1 > t0 else None}


def bench_stages(events: int, batch: int) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        state = Path(tmp)
        env = stage_env(broker.bootstrap, state, FIMSTREAM_BATCH_EVENTS=str(batch))
        settings = load_settings(env=env)
        asyncio.run(kafka.ensure_topics(settings))
        asyncio.run(fill_raw(settings, events, batch))
        for stage in ("enricher", "detector", "sink"):
            r = run_stage(stage, env, state, events)
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


def bench_k8s(pods: int, events: int, batch: int) -> dict:
    from bench_k8s import make_cluster, start_server

    from tests.k8s import podfixtures as pf
    objects, made = make_cluster(pods, 10)
    cgroups = [pf.cgroup_path(p, name, "systemd").encode() for p in made for name in pf.container_ids(p)]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        state = Path(tmp)
        server, kubeconfig = start_server(objects, state)
        try:
            env = stage_env(broker.bootstrap, state, KUBECONFIG=str(kubeconfig), FIMSTREAM_BATCH_EVENTS=str(batch))
            settings = load_settings(env=env)
            asyncio.run(kafka.ensure_topics(settings))

            def warm(counters):
                if counters is None:
                    return asyncio.run(fill_raw(settings, events, batch, cgroups))
                return counters.get("k8s_table_entries", 0) >= pods

            r = run_stage("enricher", env, state, events, warm=warm)
        finally:
            server.terminate()
    r.update(pods=pods, container_cgroups=len(cgroups))
    return r


@contextlib.contextmanager
def pipeline_up():
    """`fimstream up` in a temporary state directory, until `fimstream status` says it flows; yields
    (env, state dir); stopped with SIGINT afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        env = stage_env(f"127.0.0.1:{free_port()}", state, FIMSTREAM_PARTITIONS="2")
        up = subprocess.Popen([sys.executable, "-m", "fimstream", "up"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
        try:
            for _ in range(180):
                if subprocess.run([sys.executable, "-m", "fimstream", "status"], env=env,
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(1)
            else:
                raise RuntimeError("pipeline did not come up")
            yield env, state
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(120)


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def bench_idle(seconds: float, settle: float = 30.0) -> dict:
    """What the pipeline costs a host where nothing happens: each stage's CPU (% of one core) and RSS over
    `seconds`, after `settle` seconds of warm-up (the first symlink scan, rule loads, consumer joins)."""
    with pipeline_up() as (env, state):
        time.sleep(settle)
        up = json.loads((state / "up.json").read_text())
        pids = dict(up["stages"], broker=up["broker_pid"]) if up.get("broker_pid") else dict(up["stages"])
        t0, before = time.monotonic(), {name: _cpu_ticks(pid) for name, pid in pids.items()}
        time.sleep(seconds)
        wall = time.monotonic() - t0
        tick = os.sysconf("SC_CLK_TCK")
        out = {name: {"cpu_pct": round((_cpu_ticks(pid) - before[name]) / tick / wall * 100, 2),
                      "rss_mib": round(_rss_mib(pid))} for name, pid in pids.items()}
    out["seconds"] = round(wall, 1)
    return out


def bench_latency(seconds: float, rate: float) -> dict:
    with pipeline_up() as (env, state):
        d = Path("/etc") / f"fimstream-bench-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        n = int(seconds * rate)
        for i in range(n):
            t = time.monotonic()
            (d / f"f{i}").write_text("x")
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
        time.sleep(5)
        sql = (f"SELECT toUnixTimestamp64Milli(inserted_at) - intDiv(toUnixTimestamp64Nano(event_time), 1000000) AS ms "
               f"FROM alerts FINAL WHERE rule_id = 'etc_write' AND event_type = 'create' AND startsWith(file_path, '{d}/')")
        out = subprocess.run([sys.executable, "-m", "fimstream", "query", "--format", "json", sql], env=env,
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"query failed: {out.stderr.strip()}")
        lat = sorted(json.loads(line)["ms"] for line in out.stdout.splitlines() if line.strip())
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
    if not lat:
        return {"alerts": 0, "expected": n}
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    return {"alerts": len(lat), "expected": n, "p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99),
            "max_ms": lat[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["stages", "k8s", "latency", "idle"])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=float, default=20)
    a = ap.parse_args()
    if a.what == "stages":
        bench_stages(a.events, a.batch)
    elif a.what == "k8s":
        print(json.dumps(bench_k8s(a.pods, a.events, a.batch)))
    elif a.what == "idle":
        print(json.dumps(bench_idle(a.seconds)))
    else:
        print(json.dumps(bench_latency(a.seconds, a.rate)))


if __name__ == "__main__":
    main()
