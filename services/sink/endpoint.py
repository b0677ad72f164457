"""ClickHouse's HTTP interface in front of the sink's embedded chDB engine.

chDB lets one process open a data path, and the sink is that process; this endpoint lets everything else
(`fimstream query`, clickhouse-connect, curl, any ClickHouse tool) read the store while the pipeline runs,
exactly as it would read a server:

- `GET|POST /?query=...` (SQL in the parameter and/or the body, ClickHouse concatenates them), `database`,
  `default_format` (TabSeparated), a trailing `FORMAT x` clause, `param_<name>` query parameters, any other
  parameter is a ClickHouse setting for that request; `GET /ping` answers `Ok.`.
- Response headers clickhouse-connect reads: X-ClickHouse-Query-Id, -Format, -Timezone, -Summary and, on
  errors, -Exception-Code, with ClickHouse's body `Code: N. DB::Exception: ... (NAME) (version V)` and its
  HTTP status for the code. Responses are never compressed (loopback); compressed request bodies
  (Content-Encoding lz4/gzip/deflate, and zstd/br when their modules exist) and chunked bodies are read.
- Each request runs on a fresh chDB connection handle, so settings never leak between requests
  (sessions are not kept: `SET` and temporary tables last one request).

Security: binds to loopback by default and is read-only: each request's handle gets `readonly=2`
(no writes or DDL; settings may change), and the statement, parsed by the engine (`EXPLAIN AST`), must be
a SELECT/SHOW/DESCRIBE/EXISTS/EXPLAIN/SET/USE without `INTO OUTFILE` and without functions that reach
outside the store (file, url, s3, executable, remote, python, ...), which chDB would otherwise run with
the sink's privileges. A client that sends the write token (`<state_dir>/query-token`, mode 0600) as its
password (Basic auth, X-ClickHouse-Key or `password=`) gets full access, e.g. `fimstream query --write`.

chDB calls are serialized with the sink's inserts (store.ENGINE_LOCK) and run in the server's threads,
never on the sink's event loop.
"""
from __future__ import annotations

import base64
import gzip
import hmac
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from fimstream.store import ENGINE_LOCK

log = logging.getLogger("fimstream.sink.endpoint")

# Parameters that steer the HTTP layer; everything else in the URL is a ClickHouse setting.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
    "compress", "decompress", "user", "password", "quota_key", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "role", "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "http_zlib_compression_level", "http_response_buffer_size",
    "http_native_compression_disable_checksumming_on_decompress", "default_session_timeout",
})

READ_ONLY_STATEMENTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns",
                        "ShowCreate", "ShowDatabases", "ShowSettings", "ShowFunctions", "ShowIndexes",
                        "DescribeQuery", "DescribeCacheQuery", "Exists", "Explain", "Set", "UseQuery",
                        "ShowProcesslist")

# Table functions that only compute or read the store itself; every other table function (and the scalar
# `file`) reaches files, processes, Python objects or the network with the sink's privileges.
SAFE_TABLE_FUNCTIONS = frozenset(name.lower() for name in (
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "view", "viewIfPermitted", "viewExplain", "merge",
    "generateRandom", "generateSeries", "generate_series", "primes", "null", "loop", "format", "dictionary",
    "SQLStandardValues", "mergeTreeIndex", "mergeTreeProjection", "mergeTreeAnalyzeIndexes",
    "mergeTreeAnalyzeIndexesUUID", "mergeTreeCodecBlockCounts", "mergeTreeTextIndex", "fuzzJSON", "fuzzQuery",
))

_INSERT_WITH_DATA = re.compile(rb"^\s*(INSERT\s+INTO\s+.+?\s+FORMAT\s+(\w+))[ \t]*(?:\r?\n|$)", re.I | re.S)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*(?:SETTINGS\s+[^()]*)?;?\s*$", re.I)
_CODE = re.compile(r"Code: (\d+)\.")
_AST_LINE = re.compile(r"^( *)(\S+)(?: (\S+))?")

# ClickHouse's HTTP status for an exception code (src/Server/HTTPHandler.cpp), 500 otherwise.
_STATUS = {
    164: 403, 497: 403, 516: 401, 194: 401, 195: 401,  # READONLY, ACCESS_DENIED, AUTHENTICATION_FAILED, ...
    60: 404, 81: 404, 47: 400, 62: 400, 46: 400, 27: 400, 6: 400, 26: 400, 36: 400, 115: 400, 456: 400,
    73: 400, 53: 400, 43: 400, 44: 400, 38: 400, 41: 400, 69: 400, 70: 400,
}
_CONTENT_TYPES = (("jsoneachrow", "application/x-ndjson"), ("json", "application/json"), ("csv", "text/csv"),
                  ("tabseparated", "text/tab-separated-values"), ("tsv", "text/tab-separated-values"),
                  ("pretty", "text/plain"), ("vertical", "text/plain"), ("markdown", "text/markdown"))


def _content_type(fmt: str) -> str:
    fmt = fmt.lower()
    for prefix, mime in _CONTENT_TYPES:
        if fmt.startswith(prefix):
            return f"{mime}; charset=UTF-8"
    return "application/octet-stream"  # Native, RowBinary, Arrow, Parquet...


class QueryError(Exception):
    """An error answered the way ClickHouse answers it."""

    def __init__(self, code: int, name: str, message: str):
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")
        self.code = code


def _error_from_engine(e: Exception) -> tuple[int, str]:
    text = str(e).strip()
    idx = text.find("Code: ")
    text = text[idx:] if idx >= 0 else f"Code: 1000. DB::Exception: {text}"
    m = _CODE.match(text)
    return (int(m.group(1)) if m else 1000), text


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    if encoding == "zstd":
        from clickhouse_connect.driver.compression import _zstd_decompress

        return _zstd_decompress(body)
    if encoding == "br":
        import brotli

        return brotli.decompress(body)
    raise QueryError(1001, "UNKNOWN_COMPRESSION_METHOD", f"Unknown Content-Encoding {encoding!r}")


class QueryEndpoint:
    """The HTTP server; `start()` binds and serves in a background thread, `stop()` closes it."""

    def __init__(self, data_path: str | os.PathLike, listen: str = "127.0.0.1:8123",
                 write_token: str | None = None, writable: bool = False):
        self.data_path = os.path.realpath(data_path)  # chDB compares engine paths literally
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.write_token = write_token
        self.writable = writable  # every client may write (tests, trusted deployments)
        self.stats = {"queries": 0, "errors": 0, "refused": 0, "inserted_rows": 0}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._anchor = None  # keeps the engine up between requests
        self.version = ""
        self.timezone = "UTC"
        self._unsafe_functions: frozenset[str] = frozenset({"file"})

    # -- lifecycle
    def start(self) -> "QueryEndpoint":
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("query endpoint listens on %s: anyone who reaches it can read the audit store", self.host)
        with ENGINE_LOCK:
            Path(self.data_path).mkdir(parents=True, exist_ok=True)
            self._anchor = chdb.connect(self.data_path)
            row = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
            self.version, self.timezone = row[0], row[1].strip()
            names = self._anchor.query("SELECT name FROM system.table_functions", "TabSeparated").bytes()
        self._unsafe_functions = frozenset(
            n.lower() for n in names.decode().split() if n.lower() not in SAFE_TABLE_FUNCTIONS) | {"file"}
        endpoint = self

        class Handler(_Handler):
            pass

        Handler.endpoint = endpoint
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as e:
            self.stop()
            raise OSError(e.errno, f"query endpoint cannot listen on {self.host}:{self.port}: {e.strerror} "
                                   "(set query_listen to a free address)") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-endpoint", daemon=True)
        self._thread.start()
        log.info("query endpoint on http://%s:%d (ClickHouse HTTP, chDB %s)", self.host, self.port, self.version)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._anchor is not None:
            with ENGINE_LOCK:
                self._anchor.close()
            self._anchor = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- one request
    def execute(self, params: dict[str, str], body: bytes, password: str | None) -> tuple[bytes, dict[str, str]]:
        """Run one request; returns (response body, extra headers). Raises QueryError."""
        writable = self.writable or self._authorized(password)
        sql = params.get("query", "").encode()
        if sql and body:
            sql += b"\n"  # as ClickHouse: the parameter is the start of the query, the body its rest
        sql += body
        if not sql.strip():
            raise QueryError(62, "SYNTAX_ERROR", "Empty query")
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        fmt = params.get("default_format") or "TabSeparated"
        insert = _INSERT_WITH_DATA.match(sql)
        if insert and not writable:
            raise QueryError(164, "READONLY", "Cannot execute query in readonly mode: inserts need the write token")
        with ENGINE_LOCK:
            conn = chdb.connect(self.data_path)
            try:
                if not writable:
                    conn.query("SET readonly = 2", "TabSeparated")  # the engine refuses writes and DDL
                if params.get("database"):
                    conn.query(f"USE `{params['database'].replace('`', '')}`", "TabSeparated")
                for key, value in settings.items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                        raise QueryError(115, "UNKNOWN_SETTING", f"Unknown setting {key!r}")
                    conn.query(f"SET {key} = {_quote(value)}", "TabSeparated")
                if insert:
                    result, fmt = self._insert(conn, insert, sql[insert.end():], query_params), "TabSeparated"
                else:
                    if not writable:
                        self._check_read_only(conn, sql, query_params)
                    m = _TRAILING_FORMAT.search(sql.decode("utf-8", "replace"))
                    fmt = m.group(1) if m else fmt
                    result = conn.query(sql, fmt, params=query_params)
            except QueryError:
                raise
            except Exception as e:
                raise _EngineError(*_error_from_engine(e)) from None
            finally:
                conn.close()
        out = result.bytes() or b""
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "written_rows": "0", "written_bytes": "0", "total_rows_to_read": "0",
                   "result_rows": "0", "result_bytes": str(len(out)),
                   "elapsed_ns": str(int(result.elapsed() * 1e9))}
        if insert:
            summary.update(written_rows=summary["read_rows"], written_bytes=summary["read_bytes"])
            self.stats["inserted_rows"] += int(summary["read_rows"])
        return out, {"X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps(summary),
                     "Content-Type": _content_type(fmt)}

    def _authorized(self, password: str | None) -> bool:
        if not password:
            return False
        if self.write_token and hmac.compare_digest(password.encode(), self.write_token.encode()):
            return True
        raise QueryError(516, "AUTHENTICATION_FAILED", "default: Authentication failed: password is incorrect")

    def _check_read_only(self, conn, sql: bytes, query_params: dict[str, str]) -> None:
        """Let the engine parse the statement, then allow only reads that stay inside the store."""
        try:
            ast = conn.query(b"EXPLAIN AST " + sql, "TabSeparatedRaw", params=query_params).bytes().decode()
        except Exception as e:
            raise _EngineError(*_error_from_engine(e)) from None
        lines = ast.splitlines()
        if not lines or not lines[0].startswith(READ_ONLY_STATEMENTS):
            kind = lines[0].split(" ")[0] if lines else "?"
            raise QueryError(164, "READONLY", f"Cannot execute query in readonly mode ({kind}): "
                                              "only reads are allowed without the write token")
        stack: list[tuple[int, str]] = []
        for line in lines:
            m = _AST_LINE.match(line)
            if not m:
                continue
            depth, node, arg = len(m.group(1)), m.group(2), (m.group(3) or "")
            while stack and stack[-1][0] >= depth:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            if node == "Function" and arg.lower() in self._unsafe_functions:
                raise QueryError(497, "ACCESS_DENIED",
                                 f"function {arg}() reaches outside the store: not allowed without the write token")
            if node == "Literal" and parent in ("SelectWithUnionQuery", "SelectIntersectExceptQuery"):
                raise QueryError(497, "ACCESS_DENIED", "INTO OUTFILE is not allowed without the write token")
            stack.append((depth, node))

    def _insert(self, conn, match: re.Match, data: bytes, query_params: dict[str, str]):
        """`INSERT INTO t (...) FORMAT X` followed by data: the engine reads the data from a file."""
        fd, path = tempfile.mkstemp(prefix="fimstream-insert-", suffix=".data")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            head, fmt = match.group(1), match.group(2)
            stmt = head[: head.upper().rfind(b"FORMAT")].rstrip()
            sql = stmt + b" FROM INFILE " + _quote(path).encode() + b" FORMAT " + fmt
            return conn.query(sql, "TabSeparated", params=query_params)
        finally:
            os.unlink(path)


class _EngineError(QueryError):
    def __init__(self, code: int, text: str):
        Exception.__init__(self, text)
        self.code = code


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Handler(BaseHTTPRequestHandler):
    endpoint: QueryEndpoint
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    server_version = "fimstream-chdb"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _password(self, params: dict[str, str]) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                return base64.b64decode(auth[6:]).decode().partition(":")[2]
            except ValueError:
                return None
        return self.headers.get("X-ClickHouse-Key") or params.get("password")

    def _handle(self) -> None:
        ep = self.endpoint
        query_id = str(uuid.uuid4())
        try:
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            query_id = params.get("query_id") or query_id
            body = self._read_body()
            if url.path.rstrip("/") in ("/ping", "/replicas_status") or (url.path == "/" and not body
                                                                           and "query" not in params):
                self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"}, query_id)
                return
            if url.path not in ("/", ""):
                raise QueryError(0, "", "")
            if params.get("decompress") in ("1", "true"):
                raise QueryError(1001, "UNKNOWN_COMPRESSION_METHOD", "ClickHouse-native body compression "
                                 "(decompress=1) is not supported: use Content-Encoding")
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            t0 = time.monotonic()
            out, headers = ep.execute(params, body, self._password(params))
            ep.stats["queries"] += 1
            log.debug("query %s answered in %.1f ms", query_id, (time.monotonic() - t0) * 1000)
            self._reply(200, out, headers, query_id)
        except QueryError as e:
            if e.code == 0:
                self._reply(404, b"There is no handle " + self.path.encode() + b"\n", {}, query_id)
                return
            ep.stats["errors"] += 1
            if e.code in (164, 497, 516):
                ep.stats["refused"] += 1
            text = f"{e} (version {ep.version})\n".encode()
            self._reply(_STATUS.get(e.code, 500), text, {"X-ClickHouse-Exception-Code": str(e.code),
                                                         "Content-Type": "text/plain; charset=UTF-8"}, query_id)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as e:  # a bug of ours: still answer like ClickHouse so clients show it
            log.exception("query endpoint failed")
            ep.stats["errors"] += 1
            text = f"Code: 1001. DB::Exception: {type(e).__name__}: {e}. (STD_EXCEPTION) (version {ep.version})\n"
            self._reply(500, text.encode(), {"X-ClickHouse-Exception-Code": "1001"}, query_id)

    def _reply(self, status: int, body: bytes, headers: dict[str, str], query_id: str) -> None:
        self.send_response(status)
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Timezone", self.endpoint.timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", "fimstream-sink")
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Type" not in headers:
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
