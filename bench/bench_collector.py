"""Collector benchmark: syscall overhead and the highest event rate drained (and published) with zero loss.

    sudo .venv/bin/python bench/bench_collector.py [--ops 300000] [--rounds 5] [--no-kafka] [--json]

1. Overhead: a C loop of openat+close over 1,000 files (compiled here with cc; a ctypes loop if there is
   no compiler), run alternately without and with the collector in the same process run (the sensors are
   detached/attached as units between rounds). "with" means the whole userspace path too: the ring buffer
   drained, records decoded, Process blocks reused, events Avro-encoded and framed into batches. Two
   collector modes: every event emitted (no rules: the worst case), and the default rule pack in the
   kernel ("filtered": the files are in a directory no rule watches, so approvers/discarders drop them).
2. Realistic workload: a shell loop of cc -O2 -c, git status and tar c + x (exec, fork, hundreds of
   header opens, object and archive writes, files created and removed), without and with the collector running the
   default rule pack; the overhead on its wall time (with the paired median's 95% interval: on a shared
   host the rounds' noise can exceed the effect) and the in-kernel filter ratio (events the kernel dropped /
   events the hooks saw). Then one more round counts the cost instead: program time (bpf_stats) plus the
   build's syscalls times the slow-path cost a syscall tracepoint puts on every syscall, plus the programs'
   runs times the cost of dispatching a traced syscall to a program, over the build's wall time.
   The project phase does the same with a real project's build (bench/project_build.py: Lua 5.4 by
   default; unpack, git init + add + commit, make on every core, git status + log, tar czf): a build that
   spends its time compiling, as builds do, where the small one is mostly process start-up.
3. Zero-loss rate: the same loop paced at increasing rates for a few seconds each; the highest rate at
   which the kernel lost nothing (ring-buffer reserve failures) and userspace dropped nothing. First
   drained + encoded (no Kafka), then published to an embedded Tansu broker (unless --no-kafka), with the
   collector's CPU, RSS and bytes per event on the wire at that rate.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka.codec import lz4_encode

from fimstream.collector import records as R
from fimstream.collector.collector import Collector
from fimstream.collector.policy import KERNEL_KINDS
from fimstream.collector.encoder import RawEncoder
from fimstream.collector.publisher import EventSink, Publisher
from fimstream.collector.sensor import unload_all
from fimstream.config import Settings
from fimstream.rules import load_rules
from fimstream.schemas.codec import Codecs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import project_build  # noqa: E402

FILE_KIND_NAMES = {R.KIND_NAMES[k] for k in KERNEL_KINDS}

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    const char *dir = argv[1];
    long n = atol(argv[2]);
    double rate = atof(argv[3]);  /* ops per second; 0 = as fast as possible */
    static char paths[1000][512];
    int width = argc > 4 ? atoi(argv[4]) : 4;  /* digits after "f": the names' length is width + 1 */
    for (int i = 0; i < 1000; i++) snprintf(paths[i], sizeof(paths[i]), "%s/f%0*d", dir, width, i);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        int fd = open(paths[i % 1000], O_RDONLY);
        if (fd >= 0) close(fd);
        if (rate > 0 && i % 64 == 63) {
            double target = t0 + (i + 1) / rate;
            while (now() < target) { struct timespec s = {0, 20000}; nanosleep(&s, NULL); }
        }
    }
    printf("%ld %.0f\n", n, (now() - t0) * 1e9);
    return 0;
}
"""


class Load:
    """The openat+close loop over 1,000 files, as a separate process."""

    def __init__(self, workdir: Path, name_length: int = 5):
        self.dir = workdir / "files"
        self.dir.mkdir()
        self.width = max(4, name_length - 1)
        for i in range(1000):
            (self.dir / f"f{i:0{self.width}d}").write_bytes(b"")
        self.binary = None
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc:
            src = workdir / "loop.c"
            src.write_text(LOOP_C)
            subprocess.run([cc, "-O2", "-o", str(workdir / "loop"), str(src)], check=True)
            self.binary = str(workdir / "loop")

    def build_argv(self, compiles: int) -> list[str] | None:
        """The realistic workload: `compiles` compilations of the loop's source (None without a compiler)."""
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            return None
        out = self.dir.parent / "build"
        out.mkdir(exist_ok=True)
        repo = Path(__file__).resolve().parents[1]
        git = f"git -C {repo} status --short >/dev/null 2>&1; " if shutil.which("git") and (repo / ".git").exists() else ""
        script = (f'i=0; t0=$(date +%s%N); while [ $i -lt {compiles} ]; do {cc} -O2 -c -o {out}/o$i.o '
                  f'{self.dir.parent}/loop.c || exit 1; rm -f {out}/o$i.o; {git}'
                  f'tar -cf {out}/docs.tar -C {repo} docs rules && tar -xf {out}/docs.tar -C {out} && '
                  f'rm -rf {out}/docs.tar {out}/docs {out}/rules; i=$((i+1)); done; '
                  f'echo {compiles} $(( $(date +%s%N) - t0 ))')
        return ["/bin/sh", "-c", script]

    def argv(self, ops: int, rate: float = 0) -> list[str]:
        if self.binary:
            return [self.binary, str(self.dir), str(ops), str(rate), str(self.width)]
        code = ("import ctypes,os,sys,time\nlibc=ctypes.CDLL(None)\nd,n,r=sys.argv[1],int(sys.argv[2]),float(sys.argv[3])\n"
                f"p=[os.fsencode(f'{{d}}/f{{i:0{self.width}d}}') for i in range(1000)]\nt0=time.perf_counter()\n"
                "for i in range(n):\n fd=libc.open(p[i%1000],0)\n libc.close(fd)\n"
                " if r and i%64==63:\n  w=t0+(i+1)/r-time.perf_counter()\n  w>0 and time.sleep(w)\n"
                "print(n,(time.perf_counter()-t0)*1e9)")
        return [sys.executable, "-c", code, str(self.dir), str(ops), str(rate)]


class Harness:
    """The collector in this process, drained from the event loop like the service does."""

    def __init__(self, settings: Settings, ringbuf_mb: int):
        self.collector = Collector(ringbuf_bytes=ringbuf_mb << 20)
        self.collector.start()
        self.collector.selfcheck()
        self.collector.set_ignored({os.getpid()})
        self.codecs = Codecs()
        self.settings = settings
        self.publisher = Publisher(settings, self.codecs, max_buffered_events=1_000_000)
        self.encoder = RawEncoder(settings.host, self.collector.procs, self.collector.boot_offset_ns)
        self.collector.on_event = EventSink(self.encoder, self.publisher, settings.host)
        self.framed_bytes = 0
        self.load_cpu_s = 0.0  # the last run_load's CPU time (children_cpu_seconds)
        self.compressed_bytes = 0
        self.framed_events = 0

    def attach(self, on: bool) -> bool:
        """Sensors attached or not; True when that changed something."""
        bpf = self.collector.program.bpf
        changed = any(s.loaded != on for s in self.collector.sensors)
        if on:
            for s in self.collector.sensors:
                if not s.loaded:
                    s.load(bpf)
        else:
            unload_all(bpf, self.collector.sensors)
        return changed

    def lost(self) -> int:
        return self.collector.ringbuf_lost()

    def rules(self, ruleset) -> None:
        """The rule set's policy in the kernel, or None: no filtering (every event emitted)."""
        if ruleset is None:
            if self.collector.filter.compiled is not None:
                self.collector.filter.unload()
        elif self.collector.filter.ruleset is not ruleset:
            self.collector.load_rules(ruleset)

    def file_counters(self, kinds=None) -> dict[str, int]:
        """Kernel counters summed over every hook (or the record kinds named in `kinds`)."""
        out: dict[str, int] = {}
        for kind, row in self.collector.kernel_counters().items():
            if kinds is None or kind in kinds:
                for k, v in row.items():
                    out[k] = out.get(k, 0) + v
        return out

    def frame_without_kafka(self) -> None:
        """What publishing costs in CPU, minus the network: close batches and frame them."""
        self.publisher.flush_due()
        ready = self.publisher._ready
        while ready:
            _, bodies = ready.popleft()
            value = self.publisher.codec.frame_encoded(bodies)
            self.framed_bytes += len(value)
            self.compressed_bytes += len(lz4_encode(value))  # what the producer's lz4 makes of it
            self.framed_events += len(bodies)
            self.publisher.buffered -= len(bodies)

    async def run_load(self, argv: list[str], kafka: bool, decode: bool = True, tail: float = 0.2) -> tuple[int, float]:
        """Run the load while the collector reads the ring buffer as the service does (Collector.poll), and
        `tail` seconds more; then whatever is left is read before returning."""
        if decode:
            read = self.collector.drain
        else:  # records released unread: what the kernel side alone costs the syscalls
            def read(batch: int) -> None:
                self.collector.reader.read(lambda *_: None, batch)

        def drain(batch: int) -> None:
            read(batch)
            if not kafka:
                self.frame_without_kafka()

        stop = asyncio.Event()
        polling = asyncio.create_task(self.collector.poll(stop, 8192, drain))
        cpu0 = children_cpu_seconds()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()  # waits for the exit too: the load's CPU is in RUSAGE_CHILDREN after it
        if proc.returncode != 0:
            polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
            raise RuntimeError(f"the load {argv[:2]} exited with {proc.returncode}")
        self.load_cpu_s = children_cpu_seconds() - cpu0  # the load's own CPU, its descendants' included
        await asyncio.sleep(tail)
        polling.cancel()
        try:
            await polling
        except asyncio.CancelledError:
            pass
        read(1 << 30)
        if not kafka:
            self.publisher.flush_all()
            self.frame_without_kafka()
        n, ns = out.split()
        return int(n), float(ns)


def prog_stats(bpf) -> dict[str, tuple[int, int]]:
    """Each loaded program's (run_cnt, run_time_ns) from its fdinfo (counted while kernel.bpf_stats_enabled)."""
    out = {}
    for name, fn in bpf.funcs.items():
        info = dict(line.split(":\t") for line in open(f"/proc/self/fdinfo/{fn.fd}").read().splitlines() if ":\t" in line)
        out[name.decode()] = (int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0)))
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children and their reaped descendants: a load's user + system time,
    in which the programs the load's syscalls run (and the syscall tracing path) are counted."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def overhead(h: Harness, load: Load, ops: int, rounds: int, ruleset) -> dict:
    """Rounds alternate: no sensors, sensors with the ring released unread (kernel cost only), the whole
    collector (kernel + userspace decoding/encoding on the other core) with every event emitted, and the
    whole collector with the rules in the kernel. The fastest round of each mode is reported (medians too)."""
    runs: dict[str, list[float]] = {"baseline": [], "kernel": [], "collector": [], "filtered": []}
    lost = 0
    seen = emitted = 0
    for _ in range(rounds):
        for mode in runs:
            h.attach(mode != "baseline")
            h.rules(ruleset if mode == "filtered" else None)
            lost0, c0 = h.lost(), h.file_counters()
            n, ns = await h.run_load(load.argv(ops), kafka=False, decode=mode != "kernel")
            runs[mode].append(ns / n / 1000)
            if mode == "collector":
                lost += h.lost() - lost0
            if mode == "filtered":
                c1 = h.file_counters()
                seen += c1["seen"] - c0["seen"]
                emitted += c1["emitted"] - c0["emitted"]
    h.rules(None)
    # the fastest round of each mode: on a shared machine the slow rounds measure the neighbours
    b, k, c, f = (min(runs[m]) for m in ("baseline", "kernel", "collector", "filtered"))
    mb, mk, mc, mf = (statistics.median(runs[m]) for m in ("baseline", "kernel", "collector", "filtered"))
    return {"baseline_us_per_op": round(b, 3), "kernel_only_us_per_op": round(k, 3),
            "collector_us_per_op": round(c, 3), "filtered_us_per_op": round(f, 3),
            "kernel_overhead_pct": round((k - b) / b * 100, 1), "overhead_pct": round((c - b) / b * 100, 1),
            "filtered_overhead_pct": round((f - b) / b * 100, 1),
            # each round against the same round's baseline (its neighbour in time), then the median: the
            # steadiest figure when the machine's speed drifts between rounds
            "paired_median_overhead_pct": {m: round(statistics.median(x / y - 1 for x, y in zip(runs[m], runs["baseline"])) * 100, 1)
                                           for m in ("kernel", "collector", "filtered")},
            "median_overhead_pct": {"kernel_only": round((mk - mb) / mb * 100, 1),
                                    "collector": round((mc - mb) / mb * 100, 1),
                                    "filtered": round((mf - mb) / mb * 100, 1)},
            "filtered_events_seen": seen, "filtered_events_emitted": emitted,
            "rounds": rounds, "ops_per_round": ops,
            "events_lost_at_full_speed": lost, "runs": {m: [round(x, 3) for x in v] for m, v in runs.items()}}


def _q1(xs: list[float]) -> float:
    """The lower quartile: the fastest quarter of the rounds, past the host's slow spells."""
    return sorted(xs)[len(xs) // 4]


def _paired(baseline: list[float], other: list[float]) -> dict:
    """Each round against its own baseline round: the median ratio and its 95% confidence interval (order
    statistics, no assumption on the noise's shape): how far this host's noise lets the figure be trusted.
    Then the Hodges-Lehmann estimate of the same ratios, the tighter figure once there are many rounds."""
    ratios = sorted(y / x - 1 for x, y in zip(baseline, other))
    n = len(ratios)
    k = max(0, int(n / 2 - 0.98 * n ** 0.5))
    hl, lo, hi = hodges_lehmann(ratios)
    return {"median_pct": round(statistics.median(ratios) * 100, 1),
            "ci95_pct": [round(ratios[k] * 100, 1), round(ratios[n - 1 - k] * 100, 1)],
            "hl_pct": round(hl * 100, 2), "hl_ci95_pct": [round(lo * 100, 2), round(hi * 100, 2)]}


def hodges_lehmann(xs: list[float]) -> tuple[float, float, float]:
    """The Hodges-Lehmann estimate of where `xs` is centred (the median of every pairwise mean) and its 95%
    interval from the Wilcoxon signed-rank statistic (normal approximation). It assumes only that the noise
    is symmetric: nearly as efficient as the mean when the noise is normal (the median wastes a third of
    the rounds), and a few rounds caught in the host's slow spells do not move it."""
    n = len(xs)
    walsh = sorted((xs[i] + xs[j]) / 2 for i in range(n) for j in range(i, n))
    k = max(0, int(n * (n + 1) / 4 - 1.96 * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    return statistics.median(walsh), walsh[k], walsh[len(walsh) - 1 - k]


def tracing_costs_ns(rounds: int = 7, calls: int = 200_000) -> tuple[float, float]:
    """What syscall tracing costs beyond the programs' own run time, on getppid() (interleaved rounds, paired
    medians): the slow path every syscall of every task takes once any syscall tracepoint has a program
    (an empty program on sys_exit_setuid, which the loop never calls), and the dispatch to a program of a
    syscall that is traced (an empty program on sys_exit_getppid itself, minus the former)."""
    from bcc import BPF

    empty = BPF(text=b"int empty(void *ctx) { return 0; }")
    getppid = os.getppid
    modes = {"none": None, "unrelated": b"syscalls:sys_exit_setuid", "watched": b"syscalls:sys_exit_getppid"}
    slow, dispatch = [], []
    for r in range(rounds):
        t = {}
        order = list(modes)
        for name in order[r % 3:] + order[:r % 3]:
            tp = modes[name]
            if tp:
                empty.attach_tracepoint(tp=tp, fn_name=b"empty")
            t0 = time.perf_counter()
            for _ in range(calls):
                getppid()
            t[name] = (time.perf_counter() - t0) / calls * 1e9
            if tp:
                empty.detach_tracepoint(tp=tp)
        slow.append(t["unrelated"] - t["none"])
        dispatch.append(t["watched"] - t["unrelated"])
    empty.cleanup()
    return max(0.0, statistics.median(slow)), max(0.0, statistics.median(dispatch))


async def account(h: Harness, argv: list[str]) -> dict:
    """One more round with the collector, outside the timed comparison: what it costs the build, counted
    instead of read off two noisy wall times. Its programs' time (kernel.bpf_stats_enabled, run_time_ns per
    program), the build's syscalls (counted system-wide by a program on raw sys_enter) times the slow-path
    cost of each, the programs' runs times the dispatch cost of each (tracing_costs_ns), and the collector
    process's own CPU time (the other core, mostly)."""
    from bcc import BPF

    counter = BPF(text=b"BPF_ARRAY(n, u64, 1);\nRAW_TRACEPOINT_PROBE(sys_enter) { int z = 0; u64 *c = n.lookup(&z); "
                       b"if (c) __sync_fetch_and_add(c, 1); return 0; }")
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    bpf = h.collector.program.bpf

    h.attach(True)
    stats.write_text("1")
    try:
        p0, cpu0 = prog_stats(bpf), cpu_seconds()
        _, ns = await h.run_load(argv, kafka=False)
        p1, cpu1 = prog_stats(bpf), cpu_seconds()
    finally:
        stats.write_text("0")
        h.attach(False)
    syscalls = counter[b"n"][0].value
    counter.cleanup()
    slow_ns, dispatch_ns = tracing_costs_ns()
    wall_ms = ns / 1e6
    program_ms = sum(p1[k][1] - p0.get(k, (0, 0))[1] for k in p1) / 1e6
    runs = sum(p1[k][0] - p0.get(k, (0, 0))[0] for k in p1)
    slow_path_ms = syscalls * slow_ns / 1e6
    dispatch_ms = runs * dispatch_ns / 1e6
    top = sorted(((p1[k][1] - p0.get(k, (0, 0))[1]) / 1e6, k) for k in p1)[-5:]
    return {"build_ms": round(wall_ms), "program_ms": round(program_ms, 1),
            "program_pct": round(program_ms / wall_ms * 100, 2),
            "syscalls": syscalls, "slow_path_ns_per_syscall": round(slow_ns, 1),
            "slow_path_pct": round(slow_path_ms / wall_ms * 100, 2),
            "program_runs": runs, "dispatch_ns_per_run": round(dispatch_ns, 1),
            "dispatch_pct": round(dispatch_ms / wall_ms * 100, 2),
            "kernel_pct": round((program_ms + slow_path_ms + dispatch_ms) / wall_ms * 100, 2),
            "collector_cpu_ms": round((cpu1 - cpu0) * 1000), "collector_cpu_pct": round((cpu1 - cpu0) * 1e5 / wall_ms, 2),
            "top_programs_ms": {k: round(v, 1) for v, k in reversed(top)}}


async def realistic(h: Harness, argv: list[str], warm_up: list[str], workload: str, rounds: int, ruleset,
                    per_switch: int = 1) -> dict:
    """A build (`argv`) without and with the collector (default rules in the kernel): overhead on its wall
    time, and what the kernel dropped of what its hooks saw. `warm_up` is a short unmeasured load run after
    each switch. Each round runs `per_switch` builds in one mode, then as many in the other (the order
    alternates between rounds); the i-th of each are a pair.
    Switching costs seconds (detaching waits on the kernel), so short builds are better run several per
    switch: on this host a build's time varies ~20% from one run to the next, little of it shared with its
    neighbours, so many pairs buy more than tight ones."""
    runs: dict[str, list[float]] = {"baseline": [], "collector": []}
    cpu: dict[str, list[float]] = {"baseline": [], "collector": []}
    delta = {"seen": 0, "filtered": 0, "discarded": 0, "emitted": 0, "approved": 0}
    file_delta = dict(delta)
    published = 0

    async def one_build(mode: str) -> None:
        nonlocal published
        c0, f0, p0 = h.file_counters(), h.file_counters(FILE_KIND_NAMES), h.collector.events
        n, ns = await h.run_load(argv, kafka=False, tail=0.05)
        runs[mode].append(ns / 1e9)
        cpu[mode].append(h.load_cpu_s)
        if mode == "collector":
            c1, f1 = h.file_counters(), h.file_counters(FILE_KIND_NAMES)
            for k in delta:
                delta[k] += c1[k] - c0[k]
                file_delta[k] += f1[k] - f0[k]
            published += h.collector.events - p0

    h.rules(ruleset)  # stays loaded: the baseline rounds detach the sensors (what the kernel learned stays, as in a long run)
    h.attach(True)
    await h.run_load(argv, kafka=False, tail=0.05)  # unmeasured: the kernel learns its discarders, as in a long run
    for r in range(rounds):
        for mode in (("baseline", "collector") if r % 2 == 0 else ("collector", "baseline")):
            if h.attach(mode != "baseline"):
                # the first build after a switch ran measurably slower (detaching idles the CPU for
                # seconds, waiting on the kernel): a short unmeasured one first, whichever the mode
                await h.run_load(warm_up, kafka=False, tail=0.05)
            for _ in range(per_switch):
                await one_build(mode)
    h.attach(False)
    accounting = await account(h, argv)
    h.rules(None)
    b, c = min(runs["baseline"]), min(runs["collector"])
    mb, mc = statistics.median(runs["baseline"]), statistics.median(runs["collector"])
    def ratio(d):
        return round((d["filtered"] + d["discarded"]) / max(1, d["seen"]), 4)
    return {"workload": workload, "baseline_s": round(b, 3), "collector_s": round(c, 3),
            "overhead_pct": round((c - b) / b * 100, 1), "median_overhead_pct": round((mc - mb) / mb * 100, 1),
            # the steadier figures on a host whose speed drifts between rounds
            "lower_quartile_overhead_pct": round((_q1(runs["collector"]) / _q1(runs["baseline"]) - 1) * 100, 1),
            "paired_median_overhead_pct": round(statistics.median(
                y / x - 1 for x, y in zip(runs["baseline"], runs["collector"])) * 100, 1),
            "paired": _paired(runs["baseline"], runs["collector"]),
            # the build's own CPU time (user + system, every process of it): what the kernel side adds to
            # the build measured directly, without the other core's collector and with less of the wall
            # clock's scheduling noise
            "cpu_paired": _paired(cpu["baseline"], cpu["collector"]),
            # the same cost counted: program time + the syscall slow path, over the build's wall time
            "accounted": accounting,
            "kernel": delta, "kernel_filter_ratio": ratio(delta),
            "file_hooks": file_delta, "file_kernel_filter_ratio": ratio(file_delta),
            # exec/fork/exit always reach userspace (the process cache needs them); what no rule needs is
            # dropped there, before encoding
            "published_events": published, "published_ratio": round(published / max(1, delta["seen"]), 4),
            "rounds": rounds, "builds_per_switch": per_switch,
            "runs": {m: [round(x, 3) for x in v] for m, v in runs.items()},
            "cpu_s": {m: [round(x, 3) for x in v] for m, v in cpu.items()}}


async def zero_loss(h: Harness, load: Load, rates: list[int], seconds: float, kafka: bool) -> dict:
    """Every event emitted (sensors on, no rules): the paced loop's opens all reach userspace."""
    h.attach(True)
    h.rules(None)
    best = None
    tried = []
    for rate in rates:
        lost0, drop0 = h.lost(), h.publisher.dropped
        pub0, events0 = h.publisher.published, h.collector.events
        bytes0 = h.publisher.sender.stats.bytes if kafka else h.framed_bytes
        lz0 = h.compressed_bytes
        cpu0, t0 = cpu_seconds(), time.monotonic()
        n, ns = await h.run_load(load.argv(int(rate * seconds), rate), kafka)
        if kafka:
            await asyncio.wait_for(_settle(h), 60)
        wall = time.monotonic() - t0
        achieved = n / (ns / 1e9)
        lost, dropped = h.lost() - lost0, h.publisher.dropped - drop0
        events = h.collector.events - events0
        row = {"target_rate": rate, "achieved_rate": round(achieved), "events": events, "kernel_lost": lost,
               "userspace_dropped": dropped, "collector_cpu_pct": round((cpu_seconds() - cpu0) / wall * 100),
               "rss_mib": round(rss_mib())}
        if kafka:
            published = h.publisher.published - pub0
            row["published"] = published
            row["bytes_per_event"] = round((h.publisher.sender.stats.bytes - bytes0) / max(1, published))
        else:
            row["bytes_per_event"] = round((h.framed_bytes - bytes0) / max(1, events))
            row["lz4_bytes_per_event"] = round((h.compressed_bytes - lz0) / max(1, events))
        tried.append(row)
        print(f"  {'kafka' if kafka else 'drain'} {rate:>7,}/s target, {achieved:>9,.0f}/s achieved: "
              f"lost {lost}, dropped {dropped}, cpu {row['collector_cpu_pct']}%, rss {row['rss_mib']} MiB, "
              f"{row['bytes_per_event']} B/event Avro"
              + (f", {row['lz4_bytes_per_event']} B/event lz4" if "lz4_bytes_per_event" in row else ""), file=sys.stderr)
        if events + lost < n:  # each op is an open: fewer means the hooks were not seeing them
            raise RuntimeError(f"{events} events + {lost} lost for {n} opens: the sensors are not attached")
        if lost or dropped:
            break
        best = row
        if achieved < rate * 0.9:  # the load generator itself tops out: no higher rate to try
            break
    return {"highest_zero_loss": best, "tried": tried, "seconds_per_rate": seconds}


async def _settle(h: Harness) -> None:
    while h.publisher.buffered or h.publisher.in_flight:
        await asyncio.sleep(0.05)


def _print_build(r: dict) -> None:
    print(f"  {r['workload']}: {r['baseline_s']} s without, {r['collector_s']} s with the collector "
          f"({r['overhead_pct']:+}%); in-kernel filter ratio {r['kernel_filter_ratio']:.2%} "
          f"({r['kernel']['seen']} seen, {r['kernel']['emitted']} emitted; file hooks "
          f"{r['file_kernel_filter_ratio']:.2%}); {r['published_events']} published "
          f"({r['published_ratio']:.2%} of what the hooks saw)", file=sys.stderr)
    cp = r["cpu_paired"]
    print(f"  the build's own CPU time (user + system), paired median {cp['median_pct']:+}% "
          f"(95% interval {cp['ci95_pct'][0]:+}% .. {cp['ci95_pct'][1]:+}%); wall time paired median "
          f"{r['paired']['median_pct']:+}% ({r['paired']['ci95_pct'][0]:+}% .. "
          f"{r['paired']['ci95_pct'][1]:+}%); Hodges-Lehmann: wall {r['paired']['hl_pct']:+}% "
          f"({r['paired']['hl_ci95_pct'][0]:+}% .. {r['paired']['hl_ci95_pct'][1]:+}%), CPU "
          f"{cp['hl_pct']:+}% ({cp['hl_ci95_pct'][0]:+}% .. {cp['hl_ci95_pct'][1]:+}%)", file=sys.stderr)
    a = r["accounted"]
    print(f"  counted in one more round: programs {a['program_ms']} ms + syscall slow path "
          f"{a['syscalls']} x {a['slow_path_ns_per_syscall']} ns + dispatch {a['program_runs']} x "
          f"{a['dispatch_ns_per_run']} ns = {a['kernel_pct']}% of the build's {a['build_ms']} ms; "
          f"collector process CPU {a['collector_cpu_ms']} ms", file=sys.stderr)


async def main_async(args) -> dict:
    results: dict = {"ops": args.ops}
    with tempfile.TemporaryDirectory(prefix="fimstream-bench-") as tmp:
        load = Load(Path(tmp), args.name_length)
        results["load"] = "C openat+close loop" if load.binary else "Python ctypes loop (no C compiler)"
        results["file_name_length"] = load.width + 1
        settings = Settings(state_dir=Path(tmp) / "state", host="bench")
        h = Harness(settings, args.ringbuf_mb)
        ruleset = load_rules(args.rules)
        t0 = time.monotonic()
        symlinks = h.collector.scan_symlinks()
        results["symlink_scan"] = {"symlinks": symlinks, "seconds": round(time.monotonic() - t0, 1)}
        results["rules"] = {"path": str(args.rules), "rules": len(ruleset.rules), "version": ruleset.version[:12]}
        try:
            if "overhead" in args.phases:
                print("overhead (openat+close over 1,000 files):", file=sys.stderr)
                results["overhead"] = await overhead(h, load, args.ops, args.rounds, ruleset)
                o = results["overhead"]
                print(f"  baseline {o['baseline_us_per_op']} us/op; sensors only {o['kernel_only_us_per_op']} us/op "
                      f"(+{o['kernel_overhead_pct']}%); whole collector {o['collector_us_per_op']} us/op "
                      f"(+{o['overhead_pct']}%, {o['events_lost_at_full_speed']} events lost at full speed); "
                      f"rules in the kernel {o['filtered_us_per_op']} us/op (+{o['filtered_overhead_pct']}%; paired median "
                      f"+{o['paired_median_overhead_pct']['filtered']}%, "
                      f"{o['filtered_events_emitted']} of {o['filtered_events_seen']} events emitted)", file=sys.stderr)
            if "realistic" in args.phases and load.build_argv(1):
                print("realistic workload (a small build):", file=sys.stderr)
                results["realistic"] = r = await realistic(
                    h, load.build_argv(args.compiles), load.build_argv(1),
                    f"{args.compiles} x (cc -O2 -c, git status, tar c + x of docs/ and rules/)",
                    args.rounds, ruleset, args.builds_per_switch)
                _print_build(r)
            if "project" in args.phases and load.build_argv(1):
                print("realistic workload (a project's build):", file=sys.stderr)
                try:
                    tarball, make = project_build.prepare(Path(tmp), args.project_src)
                except project_build.ProjectError as e:
                    print(f"  skipped: {e}", file=sys.stderr)
                    results["project"] = {"skipped": str(e)}
                else:
                    jobs = args.project_jobs or os.cpu_count() or 1
                    argv = project_build.build_argv(tarball, make, jobs, git=bool(shutil.which("git")))
                    name = args.project_src.name if args.project_src else "Lua 5.4"
                    results["project"] = r = await realistic(
                        h, argv, load.build_argv(1), f"{name}: tar x, git init + add + commit, "
                        f"{make.format(jobs=jobs)}, git status + log, tar czf", args.rounds, ruleset, args.builds_per_switch)
                    _print_build(r)
            if "rates" in args.phases:
                print("zero-loss rate, drained + encoded:", file=sys.stderr)
                results["drain"] = await zero_loss(h, load, args.rates, args.seconds, kafka=False)
                if not args.no_kafka:
                    from fimstream.broker import EmbeddedBroker

                    with EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
                        kafka_settings = Settings(kafka_bootstrap=broker.bootstrap, state_dir=Path(tmp) / "state",
                                                  host="bench", partitions=1)
                        h.settings = kafka_settings
                        h.publisher = Publisher(kafka_settings, h.codecs, max_buffered_events=1_000_000)
                        h.collector.on_event = EventSink(h.encoder, h.publisher, "bench")
                        stop = asyncio.Event()
                        pub = asyncio.create_task(h.publisher.run(stop))
                        while not h.publisher.connected:
                            await asyncio.sleep(0.1)
                        print("zero-loss rate, published to Kafka (embedded Tansu):", file=sys.stderr)
                        results["kafka"] = await zero_loss(h, load, args.rates, args.seconds, kafka=True)
                        stop.set()
                        await pub
                        await h.publisher.close()
        finally:
            h.collector.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=300_000, help="openat+close per overhead round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each paced rate")
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")],
                   default=[25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 250_000, 300_000])
    p.add_argument("--ringbuf-mb", type=int, default=32)
    p.add_argument("--rules", type=Path, default=Path(__file__).resolve().parents[1] / "rules",
                   help="rules loaded into the kernel for the filtered and realistic runs (default: the pack)")
    p.add_argument("--compiles", type=int, default=30, help="compilations per realistic-workload build")
    p.add_argument("--builds-per-switch", type=int, default=1,
                   help="builds (realistic and project phases) run in one mode before switching to the other (each "
                        "switch costs seconds)")
    p.add_argument("--name-length", type=int, default=5,
                   help="length of the loop's file names (5: f0000..f0999); 6, 8, 10 ... are lengths the default "
                        "pack's name approvers have (id_rsa, id_ecdsa, id_ed25519): the name lookup then runs")
    p.add_argument("--no-kafka", action="store_true")
    p.add_argument("--project-src", type=Path, default=None,
                   help="the project phase's source: a directory or tarball with a makefile (default: Lua 5.4, "
                        "downloaded once from PyPI and cached)")
    p.add_argument("--project-jobs", type=int, default=0, help="make -j for the project phase (default: every core)")
    p.add_argument("--phases", type=lambda v: set(v.split(",")),
                   default={"overhead", "realistic", "project", "rates"},
                   help="comma-separated subset of overhead,realistic,project,rates (default: all)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loads eBPF programs)", file=sys.stderr)
        return 2
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        o = results.get("overhead")
        if o:
            print(f"openat+close: {o['baseline_us_per_op']} us/op without, {o['kernel_only_us_per_op']} us/op with the "
                  f"sensors (+{o['kernel_overhead_pct']}%), {o['collector_us_per_op']} us/op with the whole collector "
                  f"(+{o['overhead_pct']}%), {o['filtered_us_per_op']} us/op with the rules in the kernel "
                  f"(+{o['filtered_overhead_pct']}%; paired median +{o['paired_median_overhead_pct']['filtered']}%)")
        for r in (results.get("realistic"), results.get("project")):
            if not r or "skipped" in r:
                continue
            a, pm, cp = r["accounted"], r["paired"], r["cpu_paired"]
            print(f"realistic workload ({r['workload']}): {r['overhead_pct']:+}% wall time (fastest round; lower "
                  f"quartile {r['lower_quartile_overhead_pct']:+}%, paired median {pm['median_pct']:+}%, 95% CI "
                  f"{pm['ci95_pct'][0]:+}% .. {pm['ci95_pct'][1]:+}%; Hodges-Lehmann {pm['hl_pct']:+}%, 95% CI "
                  f"{pm['hl_ci95_pct'][0]:+}% .. {pm['hl_ci95_pct'][1]:+}%); its own CPU time: paired median "
                  f"{cp['median_pct']:+}% (95% CI {cp['ci95_pct'][0]:+}% .. {cp['ci95_pct'][1]:+}%); counted: {a['kernel_pct']}% in the kernel "
                  f"(programs {a['program_pct']}% + syscall slow path {a['slow_path_pct']}% + dispatch "
                  f"{a['dispatch_pct']}%), collector process "
                  f"{a['collector_cpu_pct']}% of a core; in-kernel filter ratio "
                  f"{r['kernel_filter_ratio']:.2%} (file hooks {r['file_kernel_filter_ratio']:.2%}); published "
                  f"{r['published_ratio']:.2%} of the events seen")
        for name in ("drain", "kafka"):
            if name in results:
                best = results[name]["highest_zero_loss"]
                rate = f"{best['achieved_rate']:,} events/s" if best else "none of the tried rates"
                print(f"highest zero-loss rate ({name}): {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
