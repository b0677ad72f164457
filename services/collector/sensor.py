"""Sensors: a family of BPF programs + the maps it owns + the userspace decoder of its records, loaded and
unloaded as one unit (the shape of Tetragon's pkg/sensors).

A sensor is a C file in bpf/ whose programs are declared with TP(category, event) or RAW_TP(event)
(fimstream.h; names that bcc does not auto-attach), and a Python subclass naming that file and mapping
the record kinds it emits to decode functions. The Program compiles the enabled sensors' sources into
one bcc module (maps shared through fimstream.h: ring buffer, scratch, inflight, ignore list,
counters); each sensor then loads and attaches its own programs, so a sensor whose programs the
verifier or the kernel refuses is reported and left out without taking the others down.

Adding a sensor in phase 2 = one bpf/<name>_sensor.c + one <name>_sensor.py with a Sensor subclass,
listed in Collector.sensors. Struct members only that sensor reads are declared in its `needs` (compiled
in as O_* macros like fimstream.h's); a sensor whose needs this kernel's BTF lacks is left out as a unit. Decoders receive (ring data, offset of the record, record length),
read what they keep (copying: the ring space is released after the batch) and return an Event
(event.py) or None.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Callable

log = logging.getLogger(__name__)

_TP = re.compile(r"^TP\((\w+),\s*(\w+)\)", re.M)
_RAW_TP = re.compile(r"^RAW_TP\((\w+)\)", re.M)


@dataclass(frozen=True)
class Hook:
    raw: bool  # raw tracepoint (args are the tracepoint's C arguments) or a tracefs tracepoint
    target: str  # "syscalls:sys_enter_openat" or "sched_process_fork"
    fn: str  # the program's function name

    @property
    def tracefs_path(self) -> str:
        category, _, event = self.target.partition(":")
        return f"events/{category}/{event}" if not self.raw else ""


class SensorError(RuntimeError):
    pass


def bpf_source(name: str) -> str:
    return resources.files("fimstream.bpf").joinpath(name).read_text(encoding="utf-8")


class Sensor:
    name: str = ""
    source: str = ""  # file in bpf/
    decoders: dict[int, Callable] = {}  # record kind -> decode(data, off, length) -> Event | None
    needs: dict = {}  # O_* macro -> offsets.Need: members only this sensor reads (fimstream.h's are in NEEDS)
    # tail-called programs: (the BPF_PROG_ARRAY's name, its programs in index order), loaded before the hooks
    tails: tuple[str, tuple[str, ...]] | None = None

    def constants(self, btf) -> dict[str, int]:
        """Other -D macros this sensor's C needs from the running kernel (enum values...)."""
        return {}

    def __init__(self) -> None:
        self.loaded = False
        self.hooks = self.parse_hooks(bpf_source(self.source))
        self._attached: list[Hook] = []

    @staticmethod
    def parse_hooks(text: str) -> list[Hook]:
        hooks = [Hook(False, f"{c}:{e}", f"tp__{c}__{e}") for c, e in _TP.findall(text)]
        hooks += [Hook(True, e, f"rawtp__{e}") for e in _RAW_TP.findall(text)]
        return hooks

    def load(self, bpf) -> None:
        """Load and attach every program of this sensor; all or nothing. Its tail-called programs first."""
        import ctypes as ct

        from bcc import BPF

        if self.tails:
            table, names = self.tails
            try:
                slots = bpf[table.encode()]
                for index, fn in enumerate(names):
                    slots[ct.c_int(index)] = ct.c_int(bpf.load_func(fn.encode(), BPF.TRACEPOINT).fd)
            except Exception as e:
                raise SensorError(f"sensor {self.name}: tail call program: {e}") from e
        try:
            for hook in self.hooks:
                if hook.raw:
                    fn = bpf.load_func(hook.fn.encode(), BPF.RAW_TRACEPOINT)
                    bpf.attach_raw_tracepoint(tp=hook.target.encode(), fn_name=fn.name)
                else:
                    fn = bpf.load_func(hook.fn.encode(), BPF.TRACEPOINT)
                    bpf.attach_tracepoint(tp=hook.target.encode(), fn_name=fn.name)
                self._attached.append(hook)
        except Exception as e:
            self.unload(bpf)
            raise SensorError(f"sensor {self.name}: {hook.fn} on {hook.target}: {e}") from e
        self.loaded = True

    @property
    def attached_hooks(self) -> list[Hook]:
        """The hooks whose programs are in the kernel now."""
        return list(self._attached)

    def unload(self, bpf) -> None:
        for hook in reversed(self._attached):
            self._detach(bpf, hook)
        self._attached.clear()
        self.loaded = False

    @staticmethod
    def _detach(bpf, hook: Hook) -> None:
        try:
            if hook.raw:
                bpf.detach_raw_tracepoint(tp=hook.target.encode())
            else:
                bpf.detach_tracepoint(tp=hook.target.encode())
        except Exception as e:  # already gone: nothing left to undo
            log.debug("detach %s: %s", hook.target, e)


def unload_all(bpf, sensors) -> None:
    """Detach every hook of these sensors at once. Each detach of a tracepoint program waits out a grace
    period in the kernel (~47 ms here: 4.7 s for the collector's 101 hooks one by one); threads overlap
    part of those waits (2.4 s; the kernel serialises the rest)."""
    from concurrent.futures import ThreadPoolExecutor

    loaded = [s for s in sensors if s.loaded]
    hooks = [hook for s in loaded for hook in reversed(s._attached)]
    if hooks:
        with ThreadPoolExecutor(max_workers=min(32, len(hooks))) as pool:
            list(pool.map(lambda hook: Sensor._detach(bpf, hook), hooks))
    for s in loaded:
        s._attached.clear()
        s.loaded = False
