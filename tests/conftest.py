"""Shared fixtures: a real embedded broker (Tansu) per test session, isolated topic names per test."""
from __future__ import annotations

import os
import uuid

import pytest

from fimstream.broker import EmbeddedBroker
from fimstream.config import Settings, Topics


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    """Settings pointing at the session broker, with topic names unique to this test."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(**{name: f"{prefix}.{value}" for name, value in vars(Topics()).items()})
    return Settings(kafka_bootstrap=broker.bootstrap, topics=topics, partitions=2, state_dir=tmp_path / "state",
                    linger_ms=5, group_prefix=prefix)


def needs_root():
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
