"""List+watch of one Kubernetes resource, kept current in a background thread (client-go's Reflector).

    list (paginated, consistent) -> watch from the list's resourceVersion -> ... -> watch ends (server
    timeout) -> watch again from the last resourceVersion seen (events and BOOKMARKs advance it)

- 410 Gone (HTTP status, or an ERROR event in the stream: the resourceVersion was compacted away)
  -> re-list, replacing the whole state (objects missing from the new list count as deleted).
- Dropped connection, 5xx, 429, timeouts -> exponential back-off with jitter, then watch again from
  the last resourceVersion (no re-list: nothing is lost while the version is still in the watch cache).
- Periodic resync: every `resync_seconds` a re-list (at least as new as what we have) catches anything
  a long watch could have missed.

Requests go through the official client's generated list functions (auth, TLS, token refresh) with
`_preload_content=False`: objects are parsed from raw JSON into compact records, never into the
client's model classes (10x slower and 10x the memory).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("fimstream.k8s")

R = TypeVar("R")


class ReflectorSink(Protocol[R]):
    """Where a reflector delivers state. Called from the reflector's thread."""

    def replace(self, kind: str, records: list[R], resource_version: str) -> None: ...  # a full list

    def apply(self, kind: str, event_type: str, record: R) -> None: ...  # ADDED, MODIFIED or DELETED


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; only a fresh list helps."""


class WatchError(Exception):
    pass


@dataclass
class WatchSettings:
    page_size: int = 500
    watch_timeout: tuple[int, int] = (300, 600)  # server-side timeoutSeconds, randomized like client-go
    resync_seconds: float = 1800.0  # 0 = never re-list unless told to by a 410
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    list_read_timeout: float = 60.0
    read_slack: float = 30.0  # client read timeout = timeoutSeconds + this (server is silent otherwise)


@dataclass
class ReflectorStats:
    lists: int = 0  # successful full lists (the first one plus every re-list)
    relists: int = 0  # lists after the first: 410s, resyncs
    resyncs: int = 0
    gone: int = 0  # 410 Gone answers (watch or continue token)
    events: int = 0  # ADDED/MODIFIED/DELETED events applied
    bookmarks: int = 0
    watches: int = 0  # watch requests opened
    reconnects: int = 0  # watches re-opened after an error (dropped connection, 5xx, timeout)
    errors: int = 0
    resource_version: str = ""
    synced: bool = False
    watching: bool = False
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reflector(Generic[R]):
    def __init__(self, kind: str, list_call: Callable[..., Any], convert: Callable[[dict], R | None],
                 sink: ReflectorSink[R], settings: WatchSettings | None = None,
                 field_selector: str | None = None):
        self.kind = kind
        self.list_call = list_call  # a generated list function, e.g. CoreV1Api().list_pod_for_all_namespaces
        self.convert = convert  # raw API object -> compact record (None: skip it)
        self.sink = sink
        self.settings = settings or WatchSettings()
        self.field_selector = field_selector
        self.stats = ReflectorStats()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._resync_requested = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self._backoff = self.settings.backoff_initial
        self._next_resync = 0.0
        self._rv: str | None = None  # where the next watch resumes (advanced by every event and BOOKMARK)

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "Reflector[R]":
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.kind.lower()}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._interrupt()
        if self._thread:
            self._thread.join(timeout)

    def resync(self) -> None:
        """Re-list at the next opportunity (interrupts the current watch)."""
        self._resync_requested.set()
        self._interrupt()

    def _interrupt(self) -> None:
        # A thread blocked reading a socket only wakes when the socket is shut down.
        resp = self._resp
        if resp is None:
            return
        try:
            resp.shutdown()
        except Exception:
            try:
                resp.connection.sock.shutdown(2)
            except Exception:
                pass

    # ----------------------------------------------------------------------------------- main loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._rv is None or self._resync_due():
                    self._rv = self._list(since=self._rv)
                started = time.monotonic()
                clean_end = self._watch()
                if clean_end and time.monotonic() - started < 1.0 and not self._resync_requested.is_set():
                    self._sleep_backoff()  # a server ending watches at once must not make us spin
            except Gone as e:
                self.stats.gone += 1
                log.info("k8s %s: %s; re-listing", self.kind, e)
                self._rv = None
            except Exception as e:  # every failure of a long-running watch is retried
                if self._stop.is_set():
                    break
                self._note_error(e)
                self._sleep_backoff()
                if self.stats.synced:
                    self.stats.reconnects += 1
        self.stats.watching = False

    def _resync_due(self) -> bool:
        if self._resync_requested.is_set():
            return True
        return bool(self.settings.resync_seconds) and time.monotonic() >= self._next_resync

    def _note_error(self, e: Exception) -> None:
        self.stats.errors += 1
        if isinstance(e, ApiException):
            text = f"HTTP {e.status} {e.reason}"
            if e.status == 403:
                text += " (RBAC: the service account needs get/list/watch on this resource)"
        else:
            text = f"{type(e).__name__}: {e}"
        # The first failure of a streak is a warning; repeats are debug (reconnect loops must not flood logs).
        (log.warning if not self.stats.last_error else log.debug)(
            "k8s %s: %s; retrying in %.1fs", self.kind, text, self._backoff)
        self.stats.last_error = text
        self.stats.watching = False

    def _sleep_backoff(self) -> None:
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.settings.backoff_max)
        self._stop.wait(delay)

    def _healthy(self) -> None:
        self._backoff = self.settings.backoff_initial
        if self.stats.last_error:
            log.info("k8s %s: connected again", self.kind)
        self.stats.last_error = ""

    # ---------------------------------------------------------------------------------------- list
    def _list(self, since: str | None) -> str:
        """Full list; `since` (a resync) asks for data at least that new, else a consistent read."""
        s = self.settings
        resync = since is not None
        self._resync_requested.clear()
        records: list[R] = []
        token: str | None = None
        rv = ""
        restarts = 0
        while True:
            kwargs: dict[str, Any] = {"limit": s.page_size, "_preload_content": False,
                                      "_request_timeout": (s.connect_timeout, s.list_read_timeout)}
            if self.field_selector:
                kwargs["field_selector"] = self.field_selector
            if token:
                kwargs["_continue"] = token
            elif resync:
                kwargs["resource_version"] = since
                kwargs["resource_version_match"] = "NotOlderThan"
            try:
                resp = self.list_call(**kwargs)
            except ApiException as e:
                if e.status != 410:
                    raise
                self.stats.gone += 1
                if not token and not resync:
                    raise Gone(f"list: {e.reason}") from e
                # Expired continue token (or resync version): start over with a consistent list.
                restarts += 1
                if restarts > 3:  # pages keep expiring faster than we read them: back off, then retry
                    raise WatchError(f"list: continue token expired {restarts} times") from e
                records, token, rv, resync = [], None, "", False
                continue
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            meta = body.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            convert = self.convert
            for obj in body.get("items") or ():
                record = convert(obj)
                if record is not None:
                    records.append(record)
            token = meta.get("continue") or None
            if not token:
                break
        self.sink.replace(self.kind, records, rv)
        st = self.stats
        st.lists += 1
        if st.lists > 1:
            st.relists += 1
            st.resyncs += resync
        st.resource_version = rv
        st.synced = True
        self.synced.set()
        self._healthy()
        if s.resync_seconds:
            self._next_resync = time.monotonic() + s.resync_seconds
        log.debug("k8s %s: listed %d at resourceVersion %s", self.kind, len(records), rv)
        return rv

    # --------------------------------------------------------------------------------------- watch
    def _watch(self) -> bool:
        """Watch from self._rv until the stream ends; True if it ended cleanly (server timeout, or we
        interrupted it). self._rv follows every event, so an error resumes from where it stopped."""
        s = self.settings
        rv = self._rv
        timeout = random.randint(*s.watch_timeout)
        if s.resync_seconds:
            timeout = max(1, min(timeout, int(self._next_resync - time.monotonic()) + 1))
        kwargs: dict[str, Any] = {
            "watch": True, "resource_version": rv, "allow_watch_bookmarks": True,
            "timeout_seconds": timeout, "_preload_content": False,
            "_request_timeout": (s.connect_timeout, timeout + s.read_slack)}
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        try:
            resp = self.list_call(**kwargs)
        except ApiException as e:
            if e.status == 410:
                raise Gone(f"watch: {e.reason}") from e
            raise
        self._resp = resp
        self.stats.watches += 1
        self.stats.watching = True
        self._healthy()
        try:
            if self._stop.is_set() or self._resync_requested.is_set():
                return True
            for line in iter_resp_lines(resp):
                if not line:
                    continue
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(f"watch: {obj.get('message') or obj.get('reason')}")
                    raise WatchError(f"watch ERROR event: {obj.get('code')} {obj.get('message')}")
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if etype == "BOOKMARK":
                    self.stats.bookmarks += 1
                elif etype in ("ADDED", "MODIFIED", "DELETED"):
                    record = self.convert(obj)
                    if record is not None:
                        self.sink.apply(self.kind, etype, record)
                    self.stats.events += 1
                if new_rv:
                    self._rv = self.stats.resource_version = new_rv
            return True
        except (urllib3.exceptions.HTTPError, OSError):
            if self._stop.is_set() or self._resync_requested.is_set():
                return True  # we interrupted it ourselves
            raise
        finally:
            self._resp = None
            self.stats.watching = False
            try:
                resp.release_conn()
            except Exception:
                pass
