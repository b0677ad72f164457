"""What enforcement costs the processes it watches (root; prints figures, asserts nothing).

    .venv/bin/python bench/bench_enforce.py [--ops 200000] [--opens 5000]

kill: a loop of write(2) of 1 byte to a file, timed with no kill rule, with a write kill rule the file does
not match (every write: hook + program + path walk of the fd), and with the same rule scoped to a
Kubernetes namespace (a host process is excluded by its cgroup before any path is walked).
deny: open+close of files on a tmpfs whose filesystem carries a fanotify mark (a `dir/**` deny rule on
that tmpfs), files outside the denied directory (every open waits for the collector's decision), compared
with the same loop without the mark; plus the time from reading a request to answering it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fimstream.collector.collector import Collector  # noqa: E402
from fimstream.collector.enforce_fanotify import FanotifyDeny  # noqa: E402
from fimstream.rules import load_rules_text  # noqa: E402
from fimstream.rules.enforcement import EnforcementPolicy, compile_policy  # noqa: E402

WRITE_LOOP = """import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
n = int(sys.argv[2])
t0 = time.perf_counter_ns()
for _ in range(n):
    os.pwrite(fd, b"x", 0)
print((time.perf_counter_ns() - t0) / n / 1000)
"""
OPEN_LOOP = """import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(d, f"f{i % 100}") for i in range(n)]
t0 = time.perf_counter_ns()
for p in names:
    os.close(os.open(p, os.O_RDONLY))
print((time.perf_counter_ns() - t0) / n / 1000)
"""


def timed(code: str, *args, rounds: int = 3) -> float:
    """Fastest of a few rounds, in microseconds per operation."""
    return min(float(subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, check=True,
                                    text=True).stdout) for _ in range(rounds))


def rules(text: str) -> EnforcementPolicy:
    return compile_policy(load_rules_text(text))


def bench_kill(ops: int) -> None:
    c = Collector(require_all_sensors=False)
    c.start()
    try:
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "target")
            base = timed(WRITE_LOOP, f, ops)
            c.enforce.apply(rules("rules:\n  - id: k\n    expression: 'write.file.path =~ \"/nonexistent/**\"'\n"
                                  "    actions: [kill]\n"))
            loaded = timed(WRITE_LOOP, f, ops)
            c.enforce.apply(rules("rules:\n  - id: k\n    expression: 'write.file.path =~ \"/nonexistent/**\"'\n"
                                  "    actions: [kill]\n    scope: {namespaces: [prod]}\n"))
            scoped = timed(WRITE_LOOP, f, ops)
            c.enforce.apply(EnforcementPolicy("none"))
            checks = c.enforce.counters()["checks"]
        print(f"kill, pwrite(1 byte) x {ops}: baseline {base:.2f} us/op; write kill rule loaded, no match "
              f"{loaded:.2f} us/op (+{loaded - base:.2f}); scoped to a namespace, host process {scoped:.2f} us/op "
              f"(+{scoped - base:.2f}); decisions made {checks}")
    finally:
        c.close()


def bench_deny(opens: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        mnt = os.path.join(d, "mnt")
        os.mkdir(mnt)
        subprocess.run(["mount", "-t", "tmpfs", "bench", mnt], check=True)
        try:
            os.mkdir(os.path.join(mnt, "denied"))
            other = os.path.join(mnt, "other")
            os.mkdir(other)
            for i in range(100):
                open(os.path.join(other, f"f{i}"), "w").close()
            base = timed(OPEN_LOOP, other, opens)
            deny = FanotifyDeny()
            deny.apply(rules(f"rules:\n  - id: d\n    expression: 'open.file.path =~ \"{mnt}/denied/**\"'\n"
                             "    actions: [deny]\n"))
            marked = timed(OPEN_LOOP, other, opens)
            stats = deny.stats.as_dict()
            deny.close()
        finally:
            subprocess.run(["umount", "-l", mnt], check=False)
    print(f"deny, open+close x {opens} on a tmpfs: baseline {base:.2f} us/op; filesystem marked by a prefix deny "
          f"rule {marked:.2f} us/op (+{marked - base:.2f}); request read -> answered avg {stats['answer_us_avg']} us, "
          f"max {stats['answer_us_max']} us over {stats['events']} requests ({stats['quick']} answered by the "
          f"reader from the path alone), timeouts {stats['timeouts']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--opens", type=int, default=5000)
    args = ap.parse_args()
    bench_deny(args.opens)
    bench_kill(args.ops)


if __name__ == "__main__":
    main()
