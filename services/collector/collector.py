"""The collector core: sensors loaded into the kernel, the ring buffer drained in batches, records decoded
by their sensor, the process cache kept current, events handed to a sink (the service's encode+publish
path, or a test's list). Kernel-side exclusion of the pipeline's own processes lives here too.

    c = Collector(host="node1")
    c.start()                 # compile, load, seed the process cache (blocking: ~3 s)
    c.selfcheck()             # BTF offsets against /proc; raises SelfCheckError
    c.set_ignored([...])      # our pid and the other stages'
    c.on_event = sink         # Event -> None
    await c.poll(stop)        # drains on the kernel's wake-ups (or c.drain() by hand)
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

from fimstream.collector import records as R, threadsnap
from fimstream.collector.enforce_sensor import EnforceSensor
from fimstream.collector.file_sensor import FileSensor
from fimstream.collector.net_sensor import NetSensor
from fimstream.collector.paths import Resolver
from fimstream.collector.policy import KernelFilter
from fimstream.collector.priv_sensor import PrivSensor
from fimstream.collector.process_sensor import ProcessSensor
from fimstream.collector.proctable import ProcTable
from fimstream.collector.program import Program
from fimstream.collector.ringbuf import RingReader
from fimstream.collector.sensor import Sensor
from fimstream.collector.uring_sensor import UringSensor

log = logging.getLogger(__name__)


def boot_offset_ns(samples: int = 9) -> int:
    """Wall clock - CLOCK_BOOTTIME (what bpf_ktime_get_boot_ns reads); the tightest of a few samples."""
    best = None
    for _ in range(samples):
        t0 = time.time_ns()
        b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        t1 = time.time_ns()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, (t0 + t1) // 2 - b)
    return best[1]


class Collector:
    def __init__(self, *, ringbuf_bytes: int = 32 << 20, max_depth: int = R.MAX_DEPTH,
                 offset_overrides: dict[str, int] | None = None, require_all_sensors: bool = True,
                 direct_reads: bool = True):
        self.ringbuf_bytes = ringbuf_bytes
        self.direct_reads = direct_reads  # where the kernel allows (kdirect.py); False: probe reads
        self.max_depth = max_depth
        self.offset_overrides = offset_overrides
        self.require_all_sensors = require_all_sensors
        self.procs = ProcTable()
        self.resolver = Resolver(root_of=self.procs.root_of)
        self.boot_offset_ns = boot_offset_ns()
        self.enforce = EnforceSensor()  # attaches nothing until a kill rule needs it
        self.sensors: list[Sensor] = [FileSensor(self.resolver), ProcessSensor(self.procs, self.resolver, self.boot_offset_ns),
                                      PrivSensor(self.procs, self.resolver, self.boot_offset_ns),
                                      NetSensor(self.boot_offset_ns), UringSensor(self.resolver), self.enforce]
        self.program: Program | None = None
        self.filter: KernelFilter | None = None  # the rules in the kernel (policy.py), after start()
        self.reader: RingReader | None = None
        self.on_event: Callable = lambda ev: None
        self._decoders: dict[int, Callable] = {}
        self.thread_snaps: dict[str, int] = {}  # threadsnap.seed's counts, after start()
        self.events = 0
        self.decode_errors = 0
        self.unknown_kinds = 0
        self._last_error_log = 0.0

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.program = Program(self.sensors, ringbuf_bytes=self.ringbuf_bytes, max_depth=self.max_depth,
                               offset_overrides=self.offset_overrides, require_all=self.require_all_sensors,
                               direct_reads=self.direct_reads)
        self.reader = RingReader(self.program.events_fd, self.ringbuf_bytes)
        self.filter = KernelFilter(self.program.bpf)
        self._decoders = {kind: fn for s in self.program.loaded for kind, fn in s.decoders.items()}
        self.procs.seed()
        self.thread_snaps = threadsnap.seed(self.program.bpf)  # after the fork hook is attached
        trim_heap()  # the compiler's freed memory back to the system: ~40 MiB of resident memory here
        log.info("sensors %s loaded (compile %.1fs, kernel reads: %s), %d processes seeded from /proc, "
                 "%d thread snapshots", ", ".join(s.name for s in self.program.loaded),
                 self.program.compile_seconds, self.program.reads, len(self.procs), self.thread_snaps["seeded"])

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.program is not None:
            self.program.close()
            self.program = None

    @property
    def fd(self) -> int:
        return self.program.events_fd

    def selfcheck(self, timeout: float = 5.0) -> dict:
        from fimstream.collector.selfcheck import run_selfcheck

        return run_selfcheck(self, timeout)

    def set_ignored(self, pids: Iterable[int]) -> None:
        self.program.set_ignored(pids)

    def load_rules(self, ruleset) -> None:
        """The rule set's kernel policy into the filter maps (atomically); events no rule needs are then
        dropped in the kernel, or here for the process sensor's records (the cache needs them)."""
        self.filter.load(ruleset)

    def filter_counters(self) -> dict[str, int]:
        """The filter's userspace counters for health (loads, second looks, discarders learned)."""
        return {f"filter_{k}": v for k, v in self.filter.stats.items()} if self.filter else {}

    def scan_symlinks(self) -> int:
        """Record this mount namespace's symlinks so its path strings can be judged in the kernel (seconds
        on a large filesystem: run it off the event loop). Until then they go to userspace."""
        return self.filter.scan_hazards()

    # ---------------------------------------------------------------------------------- reading
    def drain(self, max_records: int = 1 << 30) -> int:
        return self.reader.read(self._handle, max_records)

    def _handle(self, data, off: int, length: int) -> None:
        kind = data[off] | (data[off + 1] << 8)
        decode = self._decoders.get(kind)
        if decode is None:
            self.unknown_kinds += 1
            return
        try:
            ev = decode(data, off, length)
        except Exception:
            self.decode_errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.exception("cannot decode a record of kind %d (%d bytes)", kind, length)
            return
        if ev is not None:
            flt = self.filter
            if flt is not None and flt.compiled is not None and not flt.admit(ev, self.procs):
                return
            self.events += 1
            self.on_event(ev)

    async def poll(self, stop, batch: int = 8192, drain: Callable[[int], object] | None = None) -> None:
        """Drain the ring buffer whenever the kernel wakes us (epoll on the map fd), and once more
        WAKE_QUIET_S after each wake-up: the records emitted in that window wake nobody (emit() in
        fimstream.h). No timer runs while the host is quiet; SAFETY_POLL_S is a net, not the scheme.
        `drain` replaces self.drain (a benchmark that releases records unread)."""
        import asyncio

        loop = asyncio.get_running_loop()
        drain = drain or self.drain
        follow = R.WAKE_QUIET_S + 0.001  # + a record's copy into the ring after its wake-up check
        due = None  # loop time of the drain owed to the last wake-up
        waiter = None

        def ready() -> None:
            nonlocal due
            drain(batch)
            due = loop.time() + follow
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        loop.add_reader(self.fd, ready)
        try:
            while not stop.is_set():
                waiter = loop.create_future()
                timeout = R.SAFETY_POLL_S if due is None else max(0.0, due - loop.time())
                timer = loop.call_later(timeout, lambda w=waiter: w.done() or w.set_result(None))
                await waiter
                timer.cancel()
                if due is None or loop.time() >= due:  # the safety drain, or the follow-up owed
                    due = None
                    drain(batch)
        finally:
            loop.remove_reader(self.fd)

    # --------------------------------------------------------------------------------- counters
    def kernel_counters(self) -> dict[str, dict[str, int]]:
        return self.program.read_counters()

    def ringbuf_lost(self) -> int:
        return sum(row["lost"] for row in self.kernel_counters().values())


def trim_heap() -> None:
    """Return free heap pages to the system (glibc's malloc_trim; a no-op elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_ignore_file(path: os.PathLike) -> set[int]:
    pids = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.isdigit():
                    pids.add(int(line))
    except FileNotFoundError:
        pass
    return pids
