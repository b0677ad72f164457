"""Rule evaluation throughput: the full default pack (rules/) over a realistic event mix, one core.

    .venv/bin/python bench/bench_rules.py [--events 200000] [--rules rules]

The mix is what a host sends when nothing is filtered in the kernel (the detector's worst case): mostly
opens for reading (libraries, /etc, home and build trees), writes and creates in build/temp trees,
unlinks and renames, execs, connects, chmods, plus ~2% events that trigger a rule. Events are decoded
EnrichedEvent dicts (round-tripped through the Avro codec), evaluated with RuleSet.match().
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fimstream.rules import load_rules, make_event  # noqa: E402

R, W = "O_RDONLY|O_CLOEXEC", "O_WRONLY|O_CREAT|O_TRUNC"
PROCS = [
    {"exe": "/usr/bin/gcc", "comm": "gcc", "ancestors": [{"pid": 90, "comm": "make", "exe": "/usr/bin/make"}]},
    {"exe": "/usr/bin/python3.11", "comm": "python3"},
    {"exe": "/usr/bin/git", "comm": "git"},
    {"exe": "/usr/bin/bash", "comm": "bash", "ancestors": [{"pid": 1, "comm": "sshd", "exe": "/usr/sbin/sshd"}]},
    {"exe": "/usr/bin/tar", "comm": "tar"},
]


def mix(n: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    templates = [
        (30, lambda: {"event_type": "open", "file": f"/usr/lib/x86_64-linux-gnu/lib{rnd.randint(0, 300)}.so.6", "flags": R}),
        (10, lambda: {"event_type": "open", "file": rnd.choice(["/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/passwd",
                                                                "/etc/hosts", "/etc/localtime"]), "flags": R}),
        (15, lambda: {"event_type": "open", "file": f"/home/dev/src/proj/mod{rnd.randint(0, 500)}/file.c", "flags": R}),
        (8, lambda: {"event_type": "open", "file": f"/home/dev/src/proj/build/obj{rnd.randint(0, 500)}.o", "flags": W}),
        (6, lambda: {"event_type": "open", "file": f"/tmp/cc{rnd.randint(0, 99999)}.s", "flags": W}),
        (5, lambda: {"event_type": "write", "file": f"/home/dev/src/proj/build/obj{rnd.randint(0, 500)}.o"}),
        (5, lambda: {"event_type": "create", "file": f"/tmp/tmp{rnd.randint(0, 99999)}"}),
        (5, lambda: {"event_type": "unlink", "file": f"/tmp/cc{rnd.randint(0, 99999)}.s"}),
        (3, lambda: {"event_type": "rename", "file": "/home/dev/src/proj/.git/index.lock", "target": "/home/dev/src/proj/.git/index"}),
        (4, lambda: {"event_type": "exec", "file": rnd.choice(["/usr/bin/cc1", "/usr/bin/as", "/usr/bin/ld", "/usr/bin/git"])}),
        (2, lambda: {"event_type": "chmod", "file": f"/home/dev/src/proj/build/app{rnd.randint(0, 9)}", "mode": 0o755}),
        (2, lambda: {"event_type": "connect", "net": {"family": 2, "remote_addr": "140.82.112.3", "remote_port": 443}}),
        (1, lambda: {"event_type": "mkdir", "file": f"/tmp/d{rnd.randint(0, 999)}", "mode": 0o755}),
        (1, lambda: {"event_type": "setuid", "cred": {"old_uid": 0, "old_euid": 0, "new_uid": 1000, "new_euid": 1000}}),
        # ~2% that match a rule
        (1, lambda: {"event_type": "open", "file": "/etc/hosts", "flags": W}),
        (1, lambda: {"event_type": "exec", "file": "/tmp/xmrig"}),
    ]
    weights = [w for w, _ in templates]
    out = []
    for _ in range(n):
        _, make = rnd.choices(templates, weights)[0]
        spec = make()
        spec["process"] = dict(rnd.choice(PROCS))
        out.append(spec)
    return [make_event(s) for s in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct events built (then cycled)")
    ap.add_argument("--rules", default=os.path.join(os.path.dirname(__file__), "..", "rules"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rules = load_rules(args.rules)
    t_load = time.perf_counter() - t0
    events = mix(args.distinct)
    match = rules.match
    # warm up, then measure
    for ev in events[:2000]:
        match(ev)
    hits = 0
    t0 = time.perf_counter()
    done = 0
    while done < args.events:
        for ev in events:
            hits += len(match(ev))
        done += len(events)
    elapsed = time.perf_counter() - t0
    policy = rules.kernel_policy()
    passed = sum(policy.passes(ev) for ev in events)
    print(f"rule set: {len(rules.enabled_rules)} enabled rules, loaded and compiled in {t_load * 1000:.0f} ms")
    print(f"kernel policy (Python mirror) on this mix: passes {passed / len(events):.1%}, "
          f"filters {1 - passed / len(events):.1%} (exec/setuid events always pass: see `fimstream rules explain`)")
    print(f"events: {done}, alerts: {hits} ({hits / done:.2%})")
    print(f"rule evaluation: {done / elapsed:,.0f} events/s on one core ({elapsed / done * 1e6:.2f} us/event)")


if __name__ == "__main__":
    main()
