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
from fimstream.collector.sensor import SensorError
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
    """Probe reads (kernels without bpf_rdonly_cast) read whatever is at a wrong offset: the self-check
    catches it."""
    c = Collector(offset_overrides={macro: compute()[macro] + shift}, direct_reads=False)
    c.start()
    try:
        with pytest.raises(SelfCheckError, match="refusing to start") as err:
            c.selfcheck()
        assert words in str(err.value)
    finally:
        c.close()


def test_direct_reads_refuse_a_wrong_offset_at_load():
    """Direct reads: the verifier checks the read against BTF, so the program does not even load."""
    c = Collector(offset_overrides={"O_INODE_INO": compute()["O_INODE_INO"] + 8})
    with pytest.raises(SensorError, match="read kernel structs directly"):
        c.start()
    c.close()


def test_the_service_refuses_to_start(tmp_path):
    settings = Settings(kafka_bootstrap="127.0.0.1:9", state_dir=tmp_path / "state")
    wrong = {"O_TASK_REAL_PARENT": compute()["O_TASK_REAL_PARENT"] + 1152}

    async def main():
        await service.run(settings, asyncio.Event(), Health(settings.state_dir, "collector"), offset_overrides=wrong)

    with pytest.raises(SelfCheckError, match="ppid"):
        asyncio.run(main())
