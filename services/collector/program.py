"""Compiles the enabled sensors into one bcc module and loads them, each as a unit.

Offsets come from BTF (offsets.py), constants from records.py; both go in as -D macros, so nothing is
read through the installed (wrong) kernel headers.
"""
from __future__ import annotations

import logging
import os
import time
from importlib import resources
from typing import Iterable

from fimstream.collector import kdirect
from fimstream.collector import offsets as offsets_mod
from fimstream.collector import records
from fimstream.collector.btf import Btf, BtfError
from fimstream.collector.policy import policy_limits
from fimstream.collector.sensor import Sensor, SensorError, bpf_source, unload_all

log = logging.getLogger(__name__)


def _bpf_dir() -> str:
    return str(resources.files("fimstream.bpf"))


class Program:
    def __init__(self, sensors: Iterable[Sensor], *, ringbuf_bytes: int = 32 << 20, max_depth: int = records.MAX_DEPTH,
                 offset_overrides: dict[str, int] | None = None, require_all: bool = True,
                 direct_reads: bool = True):
        from bcc import BPF

        self.ringbuf_bytes = ringbuf_bytes
        self.failed: dict[str, str] = {}
        btf = Btf.load()
        sensors = list(sensors)
        overrides = dict(offset_overrides or {})
        unknown = set(overrides) - set(offsets_mod.NEEDS).union(*(s.needs for s in sensors))
        if unknown:
            raise KeyError(f"unknown offset macro {', '.join(sorted(unknown))}")
        self.offsets = offsets_mod.compute(btf, {k: v for k, v in overrides.items() if k in offsets_mod.NEEDS})
        # how the programs read kernel memory: typed direct loads where the kernel allows (kdirect.py)
        self.reads = kdirect.probe(btf, direct_reads)
        defines = {**records.c_defines(max_depth=max_depth, ringbuf_bytes=ringbuf_bytes), **self.offsets,
                   **offsets_mod.windows(self.offsets), **offsets_mod.syscall_args(btf), **policy_limits(),
                   **self.reads.defines}
        self.sensors = []
        for sensor in sensors:  # a sensor whose kernel members are missing stays out, as a unit
            try:
                own = offsets_mod.compute(btf, {k: v for k, v in overrides.items() if k in sensor.needs},
                                          sensor.needs) if sensor.needs else {}
                own.update(sensor.constants(btf))
            except (BtfError, offsets_mod.OffsetError) as e:
                if require_all:
                    raise SensorError(f"sensor {sensor.name}: {e}") from e
                log.error("sensor %s left out: %s", sensor.name, e)
                self.failed[sensor.name] = str(e)
                continue
            defines.update(own)
            self.offsets.update({k: v for k, v in own.items() if k.startswith("O_")})
            self.sensors.append(sensor)
        cflags = [f"-D{k}={v}" for k, v in sorted(defines.items())]
        cflags += [f"-I{_bpf_dir()}", "-Wno-unused-function", "-Wno-macro-redefined"]
        # Everything is pasted into the main file: bcc rewrites map calls (`events.ringbuf_output`) and
        # inserts the tracepoint `args` structs in the main file only; in an #included file they stay
        # unrewritten (the verifier then sees "unknown opcode 8d") or incomplete.
        text = "".join(f"{bpf_source(name)}\n" for name in ["fimstream.h", "filter.h", *(s.source for s in self.sensors)])
        t0 = time.monotonic()
        self.bpf = BPF(text=text.encode(), cflags=cflags)
        self.compile_seconds = time.monotonic() - t0
        self.kfunc_calls = kdirect.patch(self.bpf, self.reads.kfunc_id) if self.reads.enabled else 0
        for sensor in self.sensors:
            try:
                sensor.load(self.bpf)
            except SensorError as err:
                # with direct reads the verifier also checked every member read against BTF: say so
                msg = f"{err} ({kdirect.REFUSED})" if self.reads.enabled else str(err)
                if require_all:
                    self.close()
                    raise SensorError(msg) from err
                log.error("%s", msg)
                self.failed[sensor.name] = msg
        self.events_fd = self.bpf[b"events"].map_fd
        self.ignore_bits = self.bpf[b"ignore_bits"]
        self._ignored: set[int] = set()
        self.counters = self.bpf[b"counters"]
        self._ncpus = possible_cpus()  # once: reading it opens a sysfs file, an event of our own

    @property
    def loaded(self) -> list[Sensor]:
        return [s for s in self.sensors if s.loaded]

    # ------------------------------------------------------------------------------- ignore list
    def set_ignored(self, pids: Iterable[int]) -> None:
        """Make the kernel's ignore bitmap equal to `pids` (tgids whose events are dropped in the kernel)."""
        import ctypes as ct

        want = {int(p) for p in pids if 0 <= int(p) < records.PID_LIMIT}
        words = {pid >> 6 for pid in want ^ self._ignored}
        for w in sorted(words):
            bits = sum(1 << (pid & 63) for pid in want if pid >> 6 == w)
            self.ignore_bits[ct.c_int(w)] = ct.c_uint64(bits)
        self._ignored = want

    def ignored_pids(self) -> set[int]:
        return set(self._ignored)

    # ---------------------------------------------------------------------------------- counters
    def read_counters(self) -> dict[str, dict[str, int]]:
        """Per record kind: seen/filtered/approved/discarded/emitted/lost, summed over CPUs."""
        per_slot = self._counter_slots()
        out: dict[str, dict[str, int]] = {}
        for kind, name in records.KIND_NAMES.items():
            base = kind * records.NCOUNTERS
            out[name] = {cname: per_slot[base + i] for i, cname in enumerate(records.COUNTER_NAMES)}
        return out

    def _counter_slots(self) -> list[int]:
        """Every counter slot summed over CPUs: one BPF_MAP_LOOKUP_BATCH (health reads them each second;
        a lookup per slot was ~200 system calls), or slot by slot where the kernel lacks batches."""
        import ctypes as ct

        from bcc import libbcc

        n, ncpu = records.NKINDS * records.NCOUNTERS, self._ncpus
        keys, vals = (ct.c_uint32 * n)(), (ct.c_uint64 * (n * ncpu))()
        count, out_batch = ct.c_uint32(n), ct.c_uint32(0)
        if libbcc.lib.bpf_lookup_batch(self.counters.map_fd, None, ct.byref(out_batch), keys, vals,
                                       ct.byref(count)) == 0 and count.value == n:
            out = [0] * n
            for j in range(n):
                out[keys[j]] = sum(vals[j * ncpu:(j + 1) * ncpu])
            return out
        return [sum(self.counters[ct.c_int(i)]) for i in range(n)]

    def close(self) -> None:
        unload_all(self.bpf, self.sensors)
        self.bpf.cleanup()


def possible_cpus() -> int:
    try:
        from bcc.utils import get_possible_cpus

        return len(get_possible_cpus())
    except Exception:
        return os.cpu_count() or 1
