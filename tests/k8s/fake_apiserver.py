"""A Kubernetes API server double for tests: list and watch, with the real API's shapes and semantics.

Serves pods, namespaces, ReplicaSets, Jobs (and stores Deployments, StatefulSets, DaemonSets, CronJobs)
at the real paths, cluster-wide and namespaced:

    GET  /api/v1/pods                      /api/v1/namespaces/{ns}/pods[/{name}]
    GET  /api/v1/namespaces[/{name}]
    GET  /apis/apps/v1/replicasets         /apis/apps/v1/namespaces/{ns}/replicasets[/{name}]
    GET  /apis/batch/v1/jobs               /apis/batch/v1/namespaces/{ns}/jobs[/{name}]
    POST/PUT/DELETE on the namespaced forms (create, replace incl. /status, delete)

List: consistent snapshots by resourceVersion (unset, "0", resourceVersionMatch=NotOlderThan|Exact),
pagination with limit/continue (continue tokens expire with compaction: 410), fieldSelector
(metadata.name, metadata.namespace, spec.nodeName, status.phase, ...), labelSelector.
Watch (?watch=1): a chunked stream of JSON lines ADDED/MODIFIED/DELETED from resourceVersion
(synthetic ADDED for the current state when unset/"0"), objects entering/leaving a field or label
selector become ADDED/DELETED as on a real server, BOOKMARK events when allowWatchBookmarks=true,
ERROR 410 "too old resource version" for a compacted version, the stream ends at timeoutSeconds.

Controlled from the test: create/update/delete objects, compact() history (forces 410 on resume),
drop_watches() (breaks open streams mid-chunk), fail_next() (5xx answers), requests log.

Use from any test (the client under test can be another process: it only needs the kubeconfig):

    from tests.k8s.fake_apiserver import FakeApiServer
    from tests.k8s import podfixtures
    with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")   # then KUBECONFIG=... for the process
        api.create(podfixtures.load("pod-containerd-deployment"))
        api.delete("pods", "shop", "web-7d4b9c8f5-x2vqp")

Or standalone: python -m tests.k8s.fake_apiserver --kubeconfig /tmp/kc [--port N] [FIXTURE.json ...]
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    api_version: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


RESOURCES = {r.plural: r for r in [
    Resource("pods", "Pod", "v1", True),
    Resource("namespaces", "Namespace", "v1", False),
    Resource("nodes", "Node", "v1", False),
    Resource("replicasets", "ReplicaSet", "apps/v1", True),
    Resource("deployments", "Deployment", "apps/v1", True),
    Resource("statefulsets", "StatefulSet", "apps/v1", True),
    Resource("daemonsets", "DaemonSet", "apps/v1", True),
    Resource("jobs", "Job", "batch/v1", True),
    Resource("cronjobs", "CronJob", "batch/v1", True),
]}
KIND_TO_PLURAL = {r.kind: r.plural for r in RESOURCES.values()}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **extra: Any) -> dict:
    """A metav1.Status, as the API server returns for errors (and inside watch ERROR events)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": extra.pop("metadata", {}), "status": "Failure",
            "message": message, "reason": reason, "code": code, **extra}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status_object(code, reason, message, **extra)


# ------------------------------------------------------------------------------------------ selectors
def _field_value(obj: dict, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def parse_field_selector(text: str | None) -> Callable[[dict], bool]:
    if not text:
        return lambda obj: True
    terms = []
    for term in text.split(","):
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        terms.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return lambda obj: all((_field_value(obj, path) == value) == equal for path, equal, value in terms)


def parse_label_selector(text: str | None) -> Callable[[dict], bool]:
    if not text:
        return lambda obj: True
    terms: list[Callable[[dict], bool]] = []
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        term = term.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                terms.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                terms.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term):
            key, op, value = m.groups()
            terms.append(lambda l, k=key, o=op, v=value: (l.get(k) == v) == (o != "!="))
        elif m := re.fullmatch(r"!\s*([\w./-]+)", term):
            terms.append(lambda l, k=m.group(1): k not in l)
        elif re.fullmatch(r"[\w./-]+", term):
            terms.append(lambda l, k=term: k in l)
        else:
            raise ApiError(400, "BadRequest", f"invalid label selector: {term!r}")
    return lambda obj: all(t((obj.get("metadata") or {}).get("labels") or {}) for t in terms)


# --------------------------------------------------------------------------------------------- server
@dataclass
class _Event:
    rv: int
    plural: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict  # the object after the change (for DELETED: as it was when deleted)
    prev: dict | None  # the object before the change


class FakeApiServer:
    STAMP = "fake-apiserver.fimstream.dev/committed-at"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 0.5,
                 token: str | None = "fake-token", first_resource_version: int = 1000,
                 stamp_commits: bool = False):
        self.bookmark_interval = bookmark_interval
        self.token = token
        # Benchmarks: annotate each stored object with the wall-clock time of its commit (the moment
        # watchers can see it), so a client in another process can measure commit -> ready.
        self.stamp_commits = stamp_commits
        self._lock = threading.Condition()
        self._rv = first_resource_version
        self._compacted = 0  # states before this resourceVersion are gone (events up to it too)
        self._objects: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in RESOURCES}
        self._history: list[_Event] = []
        self._watches: set[_WatchConn] = set()
        self._failures: list[tuple[int, Callable[[str], bool]]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)
        self.auto_compact = 0  # >0: keep at most this many history events (like the watch cache window)
        # Called as before_request(method, path, query) ahead of each API request (tests inject races here).
        self.before_request: Callable[[str, str, dict[str, str]], None] | None = None
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeApiServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.drop_watches()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def kubeconfig(self) -> dict:
        user = {"token": self.token} if self.token else {}
        return {"apiVersion": "v1", "kind": "Config", "preferences": {},
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": user}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake"}

    def write_kubeconfig(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.kubeconfig(), indent=2))  # JSON is YAML: any client reads it
        return path

    # ----------------------------------------------------------------------------- test control
    @property
    def resource_version(self) -> int:
        return self._rv

    def create(self, obj: dict, plural: str | None = None) -> dict:
        obj = copy.deepcopy(obj)
        r = RESOURCES[plural or KIND_TO_PLURAL[obj["kind"]]]
        meta = obj.setdefault("metadata", {})
        if r.namespaced:
            meta.setdefault("namespace", "default")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        with self._lock:
            key = (meta.get("namespace", ""), meta["name"])
            if key in self._objects[r.plural]:
                raise ApiError(409, "AlreadyExists", f'{r.plural} "{meta["name"]}" already exists')
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            return self._commit(r, "ADDED", key, obj, None)

    def update(self, obj: dict, plural: str | None = None) -> dict:
        obj = copy.deepcopy(obj)
        r = RESOURCES[plural or KIND_TO_PLURAL[obj["kind"]]]
        meta = obj["metadata"]
        with self._lock:
            key = (meta.get("namespace", "") if r.namespaced else "", meta["name"])
            prev = self._objects[r.plural].get(key)
            if prev is None:
                raise ApiError(404, "NotFound", f'{r.plural} "{meta["name"]}" not found')
            meta["uid"] = prev["metadata"]["uid"]
            meta.setdefault("creationTimestamp", prev["metadata"].get("creationTimestamp"))
            return self._commit(r, "MODIFIED", key, obj, prev)

    def modify(self, plural: str, namespace: str, name: str, change: Callable[[dict], Any]) -> dict:
        """Read-modify-write: change(obj) edits a copy of the stored object in place."""
        with self._lock:
            obj = copy.deepcopy(self.get(plural, namespace, name))
            change(obj)
            return self.update(obj, plural)

    def delete(self, plural: str, namespace: str, name: str) -> dict:
        r = RESOURCES[plural]
        with self._lock:
            key = (namespace if r.namespaced else "", name)
            prev = self._objects[r.plural].get(key)
            if prev is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            obj = copy.deepcopy(prev)
            obj["metadata"].setdefault("deletionTimestamp", _now())
            return self._commit(r, "DELETED", key, obj, prev)

    def get(self, plural: str, namespace: str, name: str) -> dict:
        r = RESOURCES[plural]
        with self._lock:
            obj = self._objects[plural].get((namespace if r.namespaced else "", name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            return copy.deepcopy(obj)

    def atomically(self):
        """`with api.atomically():` no request is served until the block ends (several changes, one moment)."""
        return self._lock

    def compact(self, upto: int | None = None) -> None:
        """Forget history up to `upto` (default: now), as etcd compaction does: watches or continue tokens
        from before it get 410 Gone."""
        with self._lock:
            self._compacted = self._rv if upto is None else upto
            self._history = [e for e in self._history if e.rv > self._compacted]

    def drop_watches(self) -> int:
        """Break every open watch connection mid-stream (no chunked terminator). Returns how many."""
        with self._lock:
            conns = list(self._watches)
            for c in conns:
                c.drop()
            self._lock.notify_all()
        return len(conns)

    def watch_count(self, plural: str | None = None) -> int:
        """Open watch streams (headers sent). Dropping one before that only makes the client retry the request."""
        with self._lock:
            return sum(1 for w in self._watches if w.streaming and (plural is None or w.plural == plural))

    def wait_for_watches(self, count: int, plural: str | None = None, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.watch_count(plural) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def bookmark_now(self) -> None:
        """Make every watch that asked for bookmarks send one at once."""
        with self._lock:
            for w in self._watches:
                w.bookmark_due = True
            self._lock.notify_all()

    def fail_next(self, count: int = 1, code: int = 503, path_contains: str = "") -> None:
        """Answer the next `count` requests (whose path contains `path_contains`) with an error Status."""
        with self._lock:
            for _ in range(count):
                self._failures.append((code, lambda p, s=path_contains: s in p))

    def requests_for(self, path: str, **query: str) -> list[dict[str, str]]:
        return [q for m, p, q in list(self.requests)
                if p == path and all(q.get(k) == v for k, v in query.items())]

    # ------------------------------------------------------------------------------- internals
    def _commit(self, r: Resource, etype: str, key: tuple[str, str], obj: dict, prev: dict | None) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if self.stamp_commits:
            obj["metadata"].setdefault("annotations", {})[self.STAMP] = repr(time.time())
        obj.setdefault("kind", r.kind)
        obj.setdefault("apiVersion", r.api_version)
        if etype == "DELETED":
            del self._objects[r.plural][key]
        else:
            self._objects[r.plural][key] = obj
        self._history.append(_Event(self._rv, r.plural, etype, obj, prev))
        if self.auto_compact and len(self._history) > self.auto_compact:
            drop = len(self._history) - self.auto_compact
            self._compacted = self._history[drop - 1].rv
            del self._history[:drop]
        self._lock.notify_all()
        return copy.deepcopy(obj)

    def _check_failure(self, path: str) -> None:
        with self._lock:
            for i, (code, match) in enumerate(self._failures):
                if match(path):
                    del self._failures[i]
                    raise ApiError(code, "ServiceUnavailable" if code == 503 else "InternalError",
                                   f"injected failure {code}")

    def _state_at(self, plural: str, rv: int) -> dict[tuple[str, str], dict]:
        """Objects of a resource as they were at resourceVersion rv (undo later history)."""
        state = dict(self._objects[plural])
        for e in reversed(self._history):
            if e.rv <= rv:
                break
            if e.plural != plural:
                continue
            key = (e.obj["metadata"].get("namespace", ""), e.obj["metadata"]["name"])
            if e.prev is None:
                state.pop(key, None)
            else:
                state[key] = e.prev
        return state

    def _list(self, r: Resource, namespace: str | None, q: dict[str, str]) -> dict:
        fmatch = parse_field_selector(q.get("fieldSelector"))
        lmatch = parse_label_selector(q.get("labelSelector"))
        limit = int(q.get("limit") or 0)
        cont = q.get("continue")
        rv_param, match = q.get("resourceVersion", ""), q.get("resourceVersionMatch", "")
        start_after = ""
        with self._lock:
            if cont:
                if rv_param:
                    raise ApiError(400, "BadRequest", "specifying resource version is not allowed when using continue")
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                    snapshot, start_after = int(token["rv"]), token["start"]
                except Exception:
                    raise ApiError(400, "BadRequest", "continue key is not valid")
                if snapshot < self._compacted:
                    fresh = base64.urlsafe_b64encode(json.dumps({"rv": self._rv, "start": start_after}).encode())
                    raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue "
                                   "parameter.", metadata={"continue": fresh.decode()})
            elif not rv_param or rv_param == "0":
                snapshot = self._rv
            else:
                try:
                    wanted = int(rv_param)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param}")
                exact = match == "Exact" or (not match and limit > 0)  # legacy: RV + limit is exact
                if match not in ("", "Exact", "NotOlderThan"):
                    raise ApiError(400, "BadRequest", f"invalid resourceVersionMatch: {match}")
                if wanted > self._rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {wanted}, current: {self._rv}",
                                   details={"causes": [{"reason": "ResourceVersionTooLarge",
                                                        "message": "Too large resource version"}],
                                            "retryAfterSeconds": 1})
                if exact and wanted < self._compacted:
                    raise ApiError(410, "Expired", f"too old resource version: {wanted} ({self._compacted + 1})")
                snapshot = wanted if exact else self._rv
            state = self._state_at(r.plural, snapshot) if snapshot != self._rv else self._objects[r.plural]
            keys = sorted(k for k in state if (namespace is None or k[0] == namespace)
                          and f"{k[0]}/{k[1]}" > start_after)
            items, next_start = [], ""
            for i, k in enumerate(keys):
                obj = state[k]
                if not (fmatch(obj) and lmatch(obj)):
                    continue
                items.append({f: v for f, v in obj.items() if f not in ("kind", "apiVersion")})
                if limit and len(items) >= limit and i + 1 < len(keys):
                    next_start = f"{k[0]}/{k[1]}"
                    break
            meta: dict[str, Any] = {"resourceVersion": str(snapshot)}
            if next_start:
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"rv": snapshot, "start": next_start}).encode()).decode()
            # Stored objects are never changed in place (every write stores a new copy): no copy needed.
            return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": meta, "items": items}

    def _events_since(self, rv: int) -> list[_Event]:
        # history is ordered by rv; find the first event after rv
        lo, hi = 0, len(self._history)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._history[mid].rv <= rv:
                lo = mid + 1
            else:
                hi = mid
        return self._history[lo:]


class _WatchConn:
    def __init__(self, server: FakeApiServer, handler: BaseHTTPRequestHandler, plural: str):
        self.server = server
        self.handler = handler
        self.plural = plural
        self.dropped = False
        self.bookmark_due = False
        self.streaming = False  # response headers are out: a drop now breaks the body, not the request

    def drop(self) -> None:
        self.dropped = True
        try:
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _handler_for(api: FakeApiServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-kube-apiserver"

        def log_message(self, fmt, *args):  # keep test output clean
            pass

        # ------------------------------------------------------------------------------ dispatch
        def _route(self) -> tuple[Resource, str | None, str | None, str | None, dict[str, str]] | None:
            split = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            api.requests.append((self.command, split.path, q))
            if api.before_request is not None:
                api.before_request(self.command, split.path, q)
            m = re.fullmatch(r"/api/v1/(.+)|/apis/([\w.]+/v\w+)/(.+)", split.path)
            if not m:
                return None
            version, rest = ("v1", m.group(1)) if m.group(1) else (m.group(2), m.group(3))
            parts = rest.split("/")
            namespace = None
            if parts[0] == "namespaces" and len(parts) >= 3:
                namespace, parts = parts[1], parts[2:]
            elif parts[0] == "namespaces" and len(parts) == 2:  # GET /api/v1/namespaces/{name}
                return RESOURCES["namespaces"], None, parts[1], None, q
            r = RESOURCES.get(parts[0])
            if r is None or r.api_version != version or (namespace and not r.namespaced):
                return None
            name = parts[1] if len(parts) > 1 else None
            sub = parts[2] if len(parts) > 2 else None
            return r, namespace, name, sub, q

        def _serve(self) -> None:
            try:
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                if self.path.split("?")[0] in ("/healthz", "/readyz", "/livez"):
                    return self._send(200, b"ok", "text/plain")
                if self.path.split("?")[0] == "/version":
                    return self._json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake"})
                route = self._route()
                if route is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                api._check_failure(self.path)
                r, namespace, name, sub, q = route
                if self.command == "GET":
                    if name is not None:
                        return self._json(200, api.get(r.plural, namespace or "", name))
                    if q.get("watch") in ("1", "true"):
                        return self._watch(r, namespace, q)
                    return self._json(200, api._list(r, namespace, q))
                body = self._body()
                if self.command == "POST" and name is None:
                    if r.namespaced:
                        body.setdefault("metadata", {})["namespace"] = namespace or "default"
                    return self._json(201, api.create(body, r.plural))
                if self.command == "PUT" and name is not None and sub in (None, "status"):
                    return self._json(200, api.update(body, r.plural))
                if self.command == "DELETE" and name is not None:
                    return self._json(200, api.delete(r.plural, namespace or "", name))
                raise ApiError(405, "MethodNotAllowed", f"{self.command} is not supported here")
            except ApiError as e:
                try:
                    self._json(e.status["code"], e.status)
                except OSError:
                    self.close_connection = True
            except OSError:  # the client hung up (or drop_watches) before the answer was out
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                raise ApiError(400, "BadRequest", "body is not JSON")

        def _send(self, code: int, payload: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

        # --------------------------------------------------------------------------------- watch
        def _chunk(self, event: dict) -> None:
            data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _watch(self, r: Resource, namespace: str | None, q: dict[str, str]) -> None:
            fmatch = parse_field_selector(q.get("fieldSelector"))
            lmatch = parse_label_selector(q.get("labelSelector"))

            def visible(obj: dict | None) -> bool:
                return (obj is not None and (namespace is None or obj["metadata"].get("namespace") == namespace)
                        and fmatch(obj) and lmatch(obj))

            bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
            timeout = float(q.get("timeoutSeconds") or 1800)
            deadline = time.monotonic() + timeout
            rv_param = q.get("resourceVersion", "")
            conn = _WatchConn(api, self, r.plural)
            initial: list[dict] = []
            with api._lock:
                if rv_param in ("", "0"):
                    position = api._rv
                    initial = [{"type": "ADDED", "object": o}
                               for k, o in sorted(api._objects[r.plural].items()) if visible(o)]
                    too_old = False
                else:
                    try:
                        position = int(rv_param)
                    except ValueError:
                        raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param}")
                    too_old = position < api._compacted
                api._watches.add(conn)
                api._lock.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            with api._lock:
                conn.streaming = True
                api._lock.notify_all()
            try:
                if too_old:
                    self._chunk({"type": "ERROR", "object": status_object(
                        410, "Expired", f"too old resource version: {position} ({api._compacted + 1})")})
                    return self._end()
                for event in initial:
                    self._chunk(event)
                next_bookmark = time.monotonic() + api.bookmark_interval
                while True:
                    with api._lock:
                        while True:
                            if conn.dropped:
                                return
                            events = api._events_since(position)
                            now = time.monotonic()
                            if events or now >= deadline or (bookmarks and (conn.bookmark_due or now >= next_bookmark)):
                                break
                            wake = min(deadline, next_bookmark if bookmarks else deadline)
                            api._lock.wait(max(0.0, wake - now))
                        behind = position < api._compacted  # history it still needs is gone
                        compacted = api._compacted
                    if behind:  # a real server ends such a watch with 410 too
                        self._chunk({"type": "ERROR", "object": status_object(
                            410, "Expired", f"too old resource version: {position} ({compacted + 1})")})
                        return self._end()
                    with api._lock:
                        out = []
                        for e in events:
                            if e.plural != r.plural:
                                continue
                            before, after = visible(e.prev), visible(e.obj)
                            if e.type == "DELETED":
                                etype = "DELETED" if before else None
                            elif before and after:
                                etype = "MODIFIED"
                            elif after:
                                etype = "ADDED"
                            elif before:
                                etype = "DELETED"
                            else:
                                etype = None
                            if etype:
                                out.append({"type": etype, "object": e.obj})
                        if events:
                            position = events[-1].rv
                        send_bookmark = bookmarks and (conn.bookmark_due or time.monotonic() >= next_bookmark)
                        if send_bookmark:
                            conn.bookmark_due = False
                            position = max(position, api._rv)
                            bookmark_rv = position
                    for event in out:
                        self._chunk(event)
                    if send_bookmark:
                        self._chunk({"type": "BOOKMARK", "object": {
                            "kind": r.kind, "apiVersion": r.api_version,
                            "metadata": {"resourceVersion": str(bookmark_rv), "creationTimestamp": None}}})
                        next_bookmark = time.monotonic() + api.bookmark_interval
                    if time.monotonic() >= deadline:
                        return self._end()
            except OSError:
                return  # the client went away (or drop_watches)
            finally:
                with api._lock:
                    api._watches.discard(conn)
                if conn.dropped:
                    self.close_connection = True

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Iterable[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake Kubernetes API server (list/watch) for fimstream tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--kubeconfig", required=True, help="where to write a kubeconfig pointing at this server")
    p.add_argument("--bookmark-interval", type=float, default=5.0)
    p.add_argument("--stamp-commits", action="store_true",
                   help=f"annotate objects with their commit time ({FakeApiServer.STAMP})")
    p.add_argument("objects", nargs="*", help="JSON files with objects (or a List) to create at start")
    args = p.parse_args(list(argv) if argv is not None else None)
    api = FakeApiServer(host=args.host, port=args.port, bookmark_interval=args.bookmark_interval,
                        stamp_commits=args.stamp_commits).start()
    for path in args.objects:
        data = json.loads(Path(path).read_text())
        for obj in data.get("items", [data]) if data.get("kind", "").endswith("List") else [data]:
            api.create(obj)
    api.write_kubeconfig(args.kubeconfig)
    print(f"fake apiserver on {api.url}; kubeconfig {args.kubeconfig}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        api.stop()


if __name__ == "__main__":
    main()
