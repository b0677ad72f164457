"""What the collector adds to an openat+close, against what tracing a syscall costs at all.

    sudo .venv/bin/python bench/bench_open_hooks.py [--rounds 30] [--ops 60000] [--name-length 5] [--json]

Many short rounds, interleaved: the loop without anything attached, with one *empty* program on
sys_exit_openat (the floor of the collector's design: opens are traced at sys_exit alone), with two on
sys_enter_openat + sys_exit_openat (the floor of a design that stashes arguments at sys_enter), with one on
sys_exit_openat plus one on sys_enter_setuid (what any entry hook costs every syscall it does not watch), with empty
programs on every hook the collector attaches with these rules (what its tracepoints cost before any program
does work), on those of them that are not at sys_enter (what a design with no entry hooks would cost), and
with the whole collector and the default pack in the kernel. Two figures per mode: the median of each round's ratio to the
same round's baseline, and the ratio of the lower quartiles (the fastest quarter of the rounds): on this
shared machine a third of the runs are slowed 30-40% at random, which the quartile sees past. The last collector round runs with kernel.bpf_stats_enabled and
prints each hook's program time (bpf_stats itself adds ~80 ns per run).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collector import Load, prog_stats  # noqa: E402  (the same C loop, the same bpf_stats reader)

from fimstream.collector.collector import Collector  # noqa: E402
from fimstream.rules import load_rules  # noqa: E402

STATS = "/proc/sys/kernel/bpf_stats_enabled"
LABELS = {"empty_exit_tracepoint": "one empty program on sys_exit_openat",
          "empty_tracepoints": "empty programs on sys_enter_openat + sys_exit_openat",
          "empty_exit_and_unrelated_enter": "empty programs on sys_exit_openat + sys_enter_setuid",
          "empty_hook_set": "empty programs on the collector's {n} hooks",
          "empty_exit_hooks": "empty programs on its {e} hooks not at sys_enter",
          "collector": "the collector with the default pack"}
MODES = ("baseline", "empty_exit_tracepoint", "empty_tracepoints", "empty_exit_and_unrelated_enter", "empty_hook_set", "empty_exit_hooks", "collector")


def lower_quartile(xs: list[float]) -> float:
    """The 25th percentile: runs here are either near the floor or hit by the host (30-40% slower, at random,
    in about a third of them), so the fastest quarter measures the work and the median mostly the host."""
    return sorted(xs)[len(xs) // 4]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--ops", type=int, default=60_000)
    p.add_argument("--name-length", type=int, default=5)
    p.add_argument("--rules", type=Path, default=Path(__file__).resolve().parents[1] / "rules")
    p.add_argument("--modes", default=",".join(MODES[1:]),
                   help=f"comma-separated, run against the baseline (default all: {','.join(MODES[1:])})")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loads eBPF programs)", file=sys.stderr)
        return 2
    from bcc import BPF

    with tempfile.TemporaryDirectory(prefix="fimstream-bench-") as tmp:
        load = Load(Path(tmp), args.name_length)
        c = Collector()
        c.start()
        c.selfcheck()
        c.set_ignored({os.getpid()})
        c.scan_symlinks()
        c.load_rules(load_rules(args.rules))
        empty = BPF(text=b"int empty(void *ctx) { return 0; }\n"
                         b"int rawempty(struct bpf_raw_tracepoint_args *ctx) { return 0; }")
        # one program per tracepoint the collector attaches with these rules (an enforcement hook only
        # when a kill rule needs it), and the same set without its sys_enter hooks
        hook_set = list({h.target: h for s in c.sensors for h in s.attached_hooks}.values())
        exit_set = [h for h in hook_set if not h.target.startswith("syscalls:sys_enter_")]
        floors = {"empty_exit_tracepoint": [b"syscalls:sys_exit_openat"],
                  "empty_tracepoints": [b"syscalls:sys_enter_openat", b"syscalls:sys_exit_openat"],
                  # what one entry hook anywhere costs a syscall it does not watch
                  "empty_exit_and_unrelated_enter": [b"syscalls:sys_enter_setuid", b"syscalls:sys_exit_openat"]}

        def attach(mode: str, on: bool) -> None:
            if mode == "collector":
                for s in c.sensors:
                    if on != s.loaded:
                        (s.load if on else s.unload)(c.program.bpf)
            elif mode in ("empty_hook_set", "empty_exit_hooks"):
                for h in hook_set if mode == "empty_hook_set" else exit_set:
                    tp = h.target.encode()
                    if h.raw:
                        (empty.attach_raw_tracepoint(tp=tp, fn_name=b"rawempty") if on else empty.detach_raw_tracepoint(tp=tp))
                    else:
                        (empty.attach_tracepoint(tp=tp, fn_name=b"empty") if on else empty.detach_tracepoint(tp=tp))
            else:
                for tp in floors.get(mode, []):
                    (empty.attach_tracepoint(tp=tp, fn_name=b"empty") if on else empty.detach_tracepoint(tp=tp))

        def run() -> float:
            proc = subprocess.Popen(load.argv(args.ops), stdout=subprocess.PIPE, text=True)
            while proc.poll() is None:
                c.drain()
                time.sleep(0.005)
            c.drain()
            n, ns = proc.stdout.read().split()
            return float(ns) / int(n)

        wanted = set(args.modes.split(","))
        if wanted - set(MODES):
            p.error(f"unknown modes: {', '.join(sorted(wanted - set(MODES)))}")
        runs: dict[str, list[float]] = {m: [] for m in MODES if m == "baseline" or m in wanted}
        attach("collector", False)
        hooks = {}
        try:
            for r in range(args.rounds):
                order = list(runs)
                random.Random(r).shuffle(order)  # no mode always runs first (or right after another)
                for mode in order:
                    attach(mode, True)
                    last = mode == "collector" and r == args.rounds - 1  # bpf_stats on the last round only
                    if last:
                        Path(STATS).write_text("1")
                        before = prog_stats(c.program.bpf)
                    runs[mode].append(run())
                    if last:
                        after = prog_stats(c.program.bpf)
                        Path(STATS).write_text("0")
                        for name, (cnt, ns) in after.items():
                            dc, dn = cnt - before[name][0], ns - before[name][1]
                            if dc >= args.ops // 2:
                                hooks[name] = round(dn / dc)
                    attach(mode, False)
        finally:
            Path(STATS).write_text("0")
            c.close()
    paired = {m: round(statistics.median(x / y - 1 for x, y in zip(runs[m], runs["baseline"])) * 100, 1)
              for m in runs if m != "baseline"}
    quartile = {m: round((lower_quartile(runs[m]) / lower_quartile(runs["baseline"]) - 1) * 100, 1)
                for m in runs if m != "baseline"}
    out = {"rounds": args.rounds, "ops_per_round": args.ops, "file_name_length": load.width + 1,
           "baseline_ns_per_op_median": round(statistics.median(runs["baseline"])),
           "paired_median_overhead_pct": paired, "lower_quartile_overhead_pct": quartile, "hook_program_ns": hooks,
           "hooks": {"collector": len(hook_set), "not_at_sys_enter": len(exit_set)},
           "runs": {m: [round(x) for x in v] for m, v in runs.items()}}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"openat+close, {args.rounds} rounds of {args.ops:,} ops (median {out['baseline_ns_per_op_median']} "
              f"ns/op without); overhead as the paired median / the lower quartile against the baseline's:")
        for m in paired:
            print(f"  {LABELS[m].format(n=len(hook_set), e=len(exit_set)):62} {paired[m]:+6.1f}% {quartile[m]:+6.1f}%")
        for name, ns in sorted(hooks.items()):
            print(f"  {name}: {ns} ns per run (bpf_stats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
