"""Sink tests: each test gets its own chDB data path (state_dir/clickhouse) and query port.

chDB hosts one engine path per process at a time, so every test closes what it opens."""
import pytest

from fimstream.broker import free_port


@pytest.fixture
def store_settings(tmp_path):
    """Settings for tests that need only the store (no broker)."""
    from fimstream.config import Settings

    return Settings(state_dir=tmp_path / "state", query_listen=f"127.0.0.1:{free_port()}")


@pytest.fixture
def sink_settings(settings):
    """The per-test broker settings, with a free port for the sink's query endpoint."""
    settings.query_listen = f"127.0.0.1:{free_port()}"
    return settings
