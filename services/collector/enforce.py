"""Enforcement in the collector: the rule set's kill and deny rules compiled (fimstream.rules.enforcement)
and handed to the backends that can carry them out on this kernel.

    kill  bpf_send_signal(SIGKILL) from the enforcement sensor (enforce_sensor.py), decided in the kernel
    deny  fanotify permission events answered by this process (enforce_fanotify.py); BPF-LSM is probed at
          start (enforce_lsm.py) and reported, not used (see there)
    scope a node-scoped pod watch maps the selected pods to local cgroup ids (enforce_scope.py)

Every enforcement is an `enforcement` event on the raw topic: kills come through the ring buffer like
other records, denials from the fanotify thread through `drain_events()`. A rule set that cannot be
compiled, a backend that cannot start, a rule refused for kill/deny: the collector keeps collecting and
says so in its health info (`enforcement` and `enforcement_summary`) and in `fimstream status`.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from fimstream.collector.enforce_fanotify import FanotifyDeny, FanotifyError
from fimstream.collector.enforce_lsm import LsmProbe, probe_bpf_lsm
from fimstream.collector.enforce_scope import ScopeIndex
from fimstream.rules.enforcement import EnforcementPolicy, compile_policy

log = logging.getLogger(__name__)


class Enforcer:
    def __init__(self, collector, *, host: str = "", deny_timeout_ms: int = 250, deny_on_timeout: str = "allow",
                 ignored: Callable[[], set] = set, k8s_cache=None, k8s_cache_factory: Callable | None = None,
                 cgroup_root: str | None = None, lsm: LsmProbe | None = None):
        self.sensor = collector.enforce
        self.scope = ScopeIndex(k8s_cache, root=cgroup_root)
        self.k8s_cache_factory = k8s_cache_factory  # the pod watch starts with the first scoped rule
        self._lock = threading.Lock()  # rule reloads (the rules thread) vs ticks (the event loop)
        self._events: collections.deque[dict] = collections.deque()
        self.deny = FanotifyDeny(emit=self._events.append, timeout_ms=deny_timeout_ms, on_timeout=deny_on_timeout,
                                 ignored=ignored, scope=self.scope, host=host)
        self.lsm = lsm if lsm is not None else probe_bpf_lsm()
        self.policy = EnforcementPolicy("none")
        self.kill_failed: dict[str, str] = {}  # event type -> why its kill programs are not loaded
        self.deny_error = ""
        self.rules_error = ""

    # ------------------------------------------------------------------------------------ rules
    def load(self, ruleset) -> EnforcementPolicy:
        """Compile and apply a rule set (the first one, or a reload)."""
        policy = compile_policy(ruleset)
        for r in policy.refused:
            log.warning("%s", r)
        self.apply(policy)
        return policy

    def apply(self, policy: EnforcementPolicy) -> None:
        with self._lock:
            self._apply(policy)

    def _apply(self, policy: EnforcementPolicy) -> None:
        if policy.scope_tests() and self.scope.cache is None and self.k8s_cache_factory is not None:
            self.scope.set_cache(self.k8s_cache_factory())
        self.scope.refresh(force=True)
        self.kill_failed = self.sensor.apply(policy, self.scope.truth)
        for t, why in self.kill_failed.items():
            log.error("kill on %s cannot be enforced: %s", t, why)
        try:
            self.deny.apply(policy)
            self.deny_error = ""
        except (FanotifyError, OSError) as e:
            self.deny_error = str(e)
            log.error("deny rules cannot be enforced: %s", e)
        self.policy = policy
        kill = self.policy.enforced_rules("kill")
        deny = self.policy.enforced_rules("deny")
        log.info("enforcement: %s; kill rules %s, deny rules %s", self.summary, sorted(kill) or "none",
                 sorted(deny) or "none")

    def rules_failed(self, error: Exception) -> None:
        """The rule set does not compile: the policy in force stays (the first load: none)."""
        self.rules_error = str(error)

    # ----------------------------------------------------------------------------------- running
    def tick(self) -> None:
        """Every second from the service: pods that came or went change the scoped cgroups."""
        with self._lock:
            if self.policy.scope_tests() and self.scope.refresh():
                self.sensor.update_scope(self.policy, self.scope.truth)

    def drain_events(self) -> list[dict]:
        """Enforcement events made outside the kernel path (fanotify decisions), as RawEvent dicts."""
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def close(self) -> None:
        self.deny.close()
        if self.scope.cache is not None:
            self.scope.cache.stop()

    # ------------------------------------------------------------------------------------ report
    @property
    def kill_backend(self) -> str:
        if not self.policy.kill:
            return "off"
        if set(self.policy.kill) <= set(self.kill_failed):
            return "failed"
        return "bpf_send_signal"

    @property
    def deny_backend(self) -> str:
        if not self.policy.deny:
            return "off"
        return "failed" if self.deny_error else "fanotify"

    @property
    def lsm_text(self) -> str:
        if self.lsm.available:
            return "bpf-lsm available, not used: no LSM deny programs are shipped yet"
        return f"bpf-lsm {self.lsm}"

    @property
    def summary(self) -> str:
        """One line for `fimstream status`: enforcement: kill=... deny=... (bpf-lsm ...)."""
        return f"kill={self.kill_backend} deny={self.deny_backend} ({self.lsm_text})"

    def info(self) -> dict:
        out = {"kill": self.kill_backend, "deny": self.deny_backend, "bpf_lsm": str(self.lsm),
               "kill_rules": self.policy.enforced_rules("kill"), "deny_rules": self.policy.enforced_rules("deny"),
               "kill_hooks": len(self.sensor.attached), "refused": [str(r) for r in self.policy.refused],
               "scope": self.scope.stats()}
        if self.kill_failed:
            out["kill_failed"] = self.kill_failed
        if self.deny_error:
            out["deny_error"] = self.deny_error
        if self.policy.deny:
            out["deny_marks"] = self.deny.marks
            out["deny_timeout_ms"] = int(self.deny.timeout * 1000)
            out["deny_on_timeout"] = self.deny.on_timeout
        if self.rules_error:
            out["rules_error"] = self.rules_error
        return out

    def counters(self) -> dict:
        out = {f"enforce_kill_{k}": v for k, v in self.sensor.counters().items()}
        out["enforce_kill_events"] = self.sensor.kill_records
        for k, v in self.deny.stats.as_dict().items():
            out[f"enforce_deny_{k}"] = v
        return out


class EnforcementStage:
    """The collector service's enforcement: the Enforcer fed by CollectorRules (rules_stage.py), its health
    info and counters, and the fanotify decisions' enforcement events published on the raw topic (never
    dropped for a full buffer)."""

    def __init__(self, settings, collector, publisher, codecs, health, ignored: Callable[[], set]):
        from fimstream.k8s import K8sSettings, MetadataCache

        self.settings, self.publisher, self.codecs, self.health = settings, publisher, codecs, health

        def pod_watch():
            return MetadataCache(K8sSettings.from_env(node_name=settings.node_name)).start()
        self.enforcer = Enforcer(collector, host=settings.host, deny_timeout_ms=settings.enforce_deny_timeout_ms,
                                 deny_on_timeout=settings.enforce_deny_on_timeout, ignored=ignored,
                                 k8s_cache_factory=pod_watch)
        health.add_source(self.enforcer.counters)
        self._report()

    def apply(self, ruleset) -> None:
        """A rule set in force (the first or a reload); a failure leaves the enforcement in force."""
        self.enforcer.rules_error = ""
        try:
            self.enforcer.load(ruleset)
        except Exception as e:
            self.enforcer.rules_failed(e)
            raise
        finally:
            self._report()

    def failed(self, error) -> None:
        self.enforcer.rules_failed(error)
        self._report()

    def _report(self) -> None:
        self.health.info["enforcement"] = self.enforcer.info()
        self.health.info["enforcement_summary"] = self.enforcer.summary

    def tick(self) -> None:
        """Every second: scoped cgroups, the fanotify decisions' events, health."""
        from fimstream.containers import parse_cgroup

        self.enforcer.tick()
        for rec in self.enforcer.drain_events():
            ref = parse_cgroup(rec["process"].get("cgroup", b""))
            key = (ref.container_id or self.settings.host).encode()
            self.publisher.add(key, self.codecs.raw.encode_record(rec), force=True)
        self._report()

    def close(self) -> None:
        self.enforcer.close()
