"""Hot reload: a holder of the rule set in force, swapped atomically when the files change or a control
message arrives. A bad new rule set never replaces the one in force: the error is kept and reported.

Readers just use `holder.current` (one attribute read, atomic in CPython) for each batch of events.
Control messages (e.g. from a Kafka control topic) are bytes:
  * a path (one line, an existing file or directory): the holder now loads its rules from there;
  * YAML text: an overlay file added to the watched files (lists, macros, rules, exceptions - typically
    exceptions pushed by an operator); an empty document removes the overlay.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Problem, RuleError
from .ruleset import RuleSet, load_rules, rule_files

log = logging.getLogger(__name__)
CONTROL_SOURCE = "<control>"


@dataclass
class ReloadResult:
    ok: bool
    changed: bool  # the rule set in force was replaced
    ruleset: RuleSet  # the rule set in force after the attempt
    error: RuleError | None = None

    def __str__(self) -> str:
        if not self.ok:
            return f"reload rejected, keeping {self.ruleset.version[:12]}:\n{self.error}"
        return (f"rules {self.ruleset.version[:12]} ({len(self.ruleset.rules)} rules, {len(self.ruleset.correlations)} "
                f"correlations)" + ("" if self.changed else " unchanged"))


class RuleSetHolder:
    def __init__(self, paths, *, on_change: Callable[[RuleSet], None] | None = None,
                 on_error: Callable[[RuleError], None] | None = None, poll_interval: float = 2.0):
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.on_change = on_change
        self.on_error = on_error
        self.poll_interval = poll_interval
        self.overlay: str | None = None
        self.last_error: RuleError | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot = self._stat()
        self.current: RuleSet = self._load()  # the first load must succeed: raises RuleError

    # ----------------------------------------------------------------------------------- loading
    def _load(self) -> RuleSet:
        extra = [(CONTROL_SOURCE, self.overlay)] if self.overlay else []
        return load_rules(self.paths, extra_sources=extra)

    def _stat(self):
        snap = []
        for p in self.paths:
            snap.append((str(p), _mtime(p)))  # directories: catches added/removed files
        for f in rule_files([p for p in self.paths if p.exists()]):
            snap.append((str(f), _mtime(f)))
        return tuple(snap)

    def reload(self) -> ReloadResult:
        """Load the files again; swap if they compile, keep the old set otherwise."""
        with self._lock:
            self._snapshot = self._stat()
            return self._try(self._load)

    def _try(self, build: Callable[[], RuleSet]) -> ReloadResult:
        try:
            new = build()
        except RuleError as e:
            self.last_error = e
            log.error("rule reload rejected, keeping version %s:\n%s", self.current.version[:12], e)
            if self.on_error:
                self.on_error(e)
            return ReloadResult(False, False, self.current, e)
        except OSError as e:
            err = RuleError([Problem(str(getattr(e, "filename", "") or "<rules>"), 1, 1, f"cannot read rules: {e}")])
            self.last_error = err
            if self.on_error:
                self.on_error(err)
            return ReloadResult(False, False, self.current, err)
        self.last_error = None
        changed = new.version != self.current.version
        if changed:
            self.current = new
            log.info("rules reloaded: version %s, %d rules", new.version[:12], len(new.rules))
            if self.on_change:
                self.on_change(new)
        return ReloadResult(True, changed, self.current)

    def check(self) -> ReloadResult | None:
        """Poll once: reload if any rule file changed (mtime, size, added or removed). None: no change."""
        if self._stat() == self._snapshot:
            return None
        return self.reload()

    def apply_control(self, payload: bytes | str) -> ReloadResult:
        """Apply a control message: a path to load rules from, or YAML overlay text (see module doc)."""
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        stripped = text.strip()
        with self._lock:
            if stripped and "\n" not in stripped and Path(stripped).exists():
                old_paths = self.paths
                self.paths = [Path(stripped)]
                result = self._try(self._load)
                if not result.ok:
                    self.paths = old_paths
                self._snapshot = self._stat()
                return result
            old_overlay = self.overlay
            self.overlay = text if stripped else None
            result = self._try(self._load)
            if not result.ok:
                self.overlay = old_overlay
            return result

    # ----------------------------------------------------------------------------------- polling
    def start(self) -> "RuleSetHolder":
        """Poll the files every poll_interval seconds in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="rules-reloader", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.check()
            except Exception:  # never let the watcher die
                log.exception("rule reload check failed")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _mtime(p: Path):
    try:
        st = p.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None
