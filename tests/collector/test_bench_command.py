"""`fimstream bench collector` is a user-facing command: one short run of its realistic and zero-loss phases
must measure what it says it measures (figures are not checked: benchmarks print them, tests do not time)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import root_only

pytestmark = [root_only, pytest.mark.root, pytest.mark.slow]


def test_bench_collector_phases_see_the_events_they_count():
    out = subprocess.run(
        [sys.executable, "-m", "fimstream.cli", "bench", "collector", "--phases", "realistic,rates", "--rounds", "1",
         "--compiles", "1", "--rates", "5000", "--seconds", "0.5", "--no-kafka", "--json"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    realistic = results["realistic"]
    assert realistic["kernel"]["seen"] > 0 and realistic["file_hooks"]["seen"] > 0
    counted = realistic["accounted"]
    assert counted["program_ms"] > 0 and counted["syscalls"] > 0 and counted["kernel_pct"] > 0
    assert set(realistic["paired"]) == {"median_pct", "ci95_pct", "hl_pct", "hl_ci95_pct"}
    # the build's own CPU time is measured in both modes (a compiler run takes tens of ms at least)
    assert all(x > 0.01 for m in ("baseline", "collector") for x in realistic["cpu_s"][m]), realistic["cpu_s"]
    assert set(realistic["cpu_paired"]) == {"median_pct", "ci95_pct", "hl_pct", "hl_ci95_pct"}
    # the rates phase runs after the realistic one, which detaches the sensors: it must attach them itself
    row = results["drain"]["tried"][0]
    assert row["events"] + row["kernel_lost"] >= 2500  # 5,000 opens/s for 0.5 s, each one an event


def test_bench_collector_project_phase_builds_a_users_tree(tmp_path):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "Makefile").write_text("all: a.o b.o\na.o: a.c\n\tcc -O2 -c a.c\nb.o: b.c\n\tcc -O2 -c b.c\n")
    for name in ("a", "b"):
        (src / f"{name}.c").write_text(f"int {name}(int x) {{ return x * 3; }}\n")
    out = subprocess.run(
        [sys.executable, "-m", "fimstream.cli", "bench", "collector", "--phases", "project", "--project-src", str(src),
         "--rounds", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    project = json.loads(out.stdout)["project"]
    assert project["workload"].startswith("proj: ") and "make -j" in project["workload"]
    assert len(project["runs"]["baseline"]) == len(project["runs"]["collector"]) == 1
    # the build ran under the sensors: its compiler's execs and the tree's files reached the hooks
    assert project["kernel"]["seen"] > 0 and project["file_hooks"]["seen"] > 0
    assert project["accounted"]["program_ms"] > 0
