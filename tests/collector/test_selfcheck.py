"""The start-up self-check: correct BTF offsets pass, a wrong one stops the collector with a message that
names what disagrees (here: offsets deliberately moved, as a kernel with another layout would)."""
from __future__ import annotations

import asyncio
import os

import pytest

from fimstream.collector import service
from fimstream.collector.collector import Collector
from fimstream.collector.offsets import compute
from fimstream.collector.selfcheck import SelfCheckError
from fimstream.config import Settings
from fimstream.health import Health

from .conftest import root_only

pytestmark = root_only


def test_correct_offsets_pass(collector):
    found = collector.selfcheck()
    assert found["open"] == found["fork"] == os.getpid() and found["exec"] == found["exit"] != os.getpid()


@pytest.mark.parametrize("macro, shift, words", [
    ("O_TASK_REAL_PARENT", 1152, "ppid"),  # where 6.1's headers put it: 1280 + 1152 = 2432
    ("O_INODE_INO", 8, "inode"),
    ("O_CRED_EUID", 4, "euid"),
])
def test_a_wrong_offset_is_caught_with_a_clear_message(macro, shift, words):
    c = Collector(offset_overrides={macro: compute()[macro] + shift})
    c.start()
    try:
        with pytest.raises(SelfCheckError, match="refusing to start") as err:
            c.selfcheck()
        assert words in str(err.value)
    finally:
        c.close()


def test_the_service_refuses_to_start(tmp_path):
    settings = Settings(kafka_bootstrap="127.0.0.1:9", state_dir=tmp_path / "state")
    wrong = {"O_TASK_REAL_PARENT": compute()["O_TASK_REAL_PARENT"] + 1152}

    async def main():
        await service.run(settings, asyncio.Event(), Health(settings.state_dir, "collector"), offset_overrides=wrong)

    with pytest.raises(SelfCheckError, match="ppid"):
        asyncio.run(main())
