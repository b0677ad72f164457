"""Stage counters reach a Prometheus scrape through OpenTelemetry."""
import re
import subprocess
import sys
import time
import urllib.request

from fimstream.broker import free_port


def test_prometheus_endpoint_serves_stage_counters(settings, tmp_path):
    port = free_port()
    code = f"""
import asyncio, os
os.environ.update(OTEL_METRICS_EXPORTER="prometheus", OTEL_EXPORTER_PROMETHEUS_PORT="{port}")
from fimstream import metrics
from fimstream.health import Health
h = Health({str(tmp_path)!r}, "detector")
export = metrics.setup("detector")
h.exports.append(export.update)
h.set(events=1234, dead_letters=2, rules_version="abc")
h.write()
print("ready", flush=True)
import time; time.sleep(30)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert re.search(r'^fimstream_events\{[^}]*stage="detector"[^}]*\} 1234\.0$', body, re.M), body
        assert re.search(r'^fimstream_dead_letters\{[^}]*stage="detector"[^}]*\} 2\.0$', body, re.M), body
        assert "rules_version" not in body  # only numbers become metrics
    finally:
        proc.kill()
