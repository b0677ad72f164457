"""The sink's ClickHouse-HTTP endpoint over a real chDB engine, spoken to by clickhouse-connect and urllib."""
import gzip
import http.client
import urllib.error
import urllib.parse
import urllib.request

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from fimstream import store
from fimstream.sink.endpoint import QueryEndpoint

TOKEN = "t0ken"


@pytest.fixture
def endpoint(store_settings):
    client = store.open_client(store_settings)
    store.ensure_schema(client)
    ep = QueryEndpoint(store_settings.chdb_path, "127.0.0.1:0", write_token=TOKEN).start()
    yield ep
    ep.stop()
    client.close()


def _get(ep, query=None, body=None, headers=None, **params):
    if query is not None:
        params["query"] = query
    url = f"{ep.url}/?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_plain_http_like_curl(endpoint):
    assert _get(endpoint, "SELECT 1")[2] == b"1\n"
    status, headers, body = _get(endpoint, "SELECT number, 'a' AS a FROM numbers(2) FORMAT JSONEachRow")
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert body == b'{"number":0,"a":"a"}\n{"number":1,"a":"a"}\n'
    assert _get(endpoint, "SELECT number FROM numbers(3) WHERE", body=b"number > 0")[2] == b"1\n2\n"  # param + body
    assert _get(endpoint, body=b"SELECT 2")[2] == b"2\n"
    assert _get(endpoint, "SELECT 1", default_format="CSVWithNames")[2] == b'"1"\n1\n'
    assert _get(endpoint, "SELECT {n:UInt8} + 1", param_n="41")[2] == b"42\n"
    assert _get(endpoint, "SELECT currentDatabase()", database="system")[2] == b"system\n"
    assert _get(endpoint, "SELECT getSetting('max_threads')", max_threads="1")[2] == b"1\n"
    assert _get(endpoint, "SELECT getSetting('max_threads') = 1")[2] == b"0\n"  # settings never leak
    gz = _get(endpoint, body=gzip.compress(b"SELECT 3"), headers={"Content-Encoding": "gzip"})
    assert gz[2] == b"3\n"
    status, headers, body = _get(endpoint, "SELECT nope FROM events")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "47"
    assert body.startswith(b"Code: 47. DB::Exception: ") and b"(UNKNOWN_IDENTIFIER)" in body
    status, headers, body = _get(endpoint, "SELECT throwIf(1)")
    assert status == 500 and body.startswith(b"Code: 395. DB::Exception:")
    assert _get(endpoint)[2] == b"Ok.\n"
    with urllib.request.urlopen(f"{endpoint.url}/ping") as r:
        assert r.read() == b"Ok.\n"


def test_chunked_body(endpoint):
    conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
    conn.request("POST", "/", body=iter([b"SELECT ", b"40 + 2"]), encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"42\n"
    conn.close()


def test_clickhouse_connect_reads_and_is_refused_writes(endpoint):
    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port)
    try:
        assert client.server_version == endpoint.version
        assert client.query("SELECT count() FROM events").result_rows == [(0,)]
        assert client.command("SELECT 41 + 1") == 42
        df = client.query_df("SELECT number AS n, toString(number) AS s FROM numbers(3)")
        assert list(df["n"]) == [0, 1, 2] and list(df["s"]) == ["0", "1", "2"]
        assert client.query_arrow("SELECT number FROM numbers(4)").num_rows == 4
        assert client.query("SELECT {x:String}", parameters={"x": "it's"}).result_rows == [("it's",)]
        with pytest.raises(DatabaseError, match="READONLY"):
            client.insert("events", [[1]], column_names=["retval"])
        with pytest.raises(DatabaseError, match="READONLY"):
            client.command("DROP TABLE events")
        with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
            client.query("SELECT * FROM no_such_table")
    finally:
        client.close()


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT * FROM executable('x.sh', 'TSV', 'a String')",
    "SELECT 1 INTO OUTFILE '/tmp/fimstream-endpoint-test'",
    "SYSTEM DROP DNS CACHE",
    "KILL QUERY WHERE 1",
    "CREATE TABLE x (a UInt8) ENGINE = Memory",
    "SET readonly = 0",
])
def test_reads_stay_inside_the_store(endpoint, sql):
    status, headers, body = _get(endpoint, sql)
    assert status in (403, 500) and b"DB::Exception" in body, body
    assert headers["X-ClickHouse-Exception-Code"] in ("164", "497"), body


def test_write_token_grants_writes(endpoint):
    with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
        clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, password="wrong")
    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, password=TOKEN)
    try:
        client.command("CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        client.insert("t", [[1, b"\xff\xfe"], [2, b"ok"]], column_names=["a", "s"])  # lz4-compressed Native body
        assert client.query("SELECT a, hex(s) FROM t ORDER BY a").result_rows == [(1, "FFFE"), (2, "6F6B")]
        assert endpoint.stats["inserted_rows"] == 2
    finally:
        client.close()
