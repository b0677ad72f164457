"""00_common.yaml's container_risk (rule scores of one container adding up), live. mass_log_deletion is
in test_anti_forensics.py."""
from __future__ import annotations

import os

from .harness import assert_fires, assert_quiet, fires, in_child, quiet, remove, unique


def _write_open(path):
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


@fires("container_risk")
def test_several_suspicious_actions_add_up(live, tmp_path):
    tool = str(tmp_path / "tool")
    with open(tool, "wb"):
        pass

    def go():
        open("/etc/shadow", "rb").close()  # cred_shadow_read 40
        _write_open("/etc/passwd")  # cred_account_db_modified 40 (+ etc_write 5)
        os.chmod(tool, 0o4755)  # setuid_bit_set 40
    out = live.trigger(in_child(go))
    hits = assert_fires(out, "container_risk")
    assert len(hits) == 1 and hits[0]["score"] >= 100 and len(hits[0]["related_event_ids"]) >= 2


@quiet("container_risk")
def test_one_suspicious_action_and_noise_stay_below(live):
    path = f"/etc/{unique()}"

    def go():
        open("/etc/shadow", "rb").close()  # 40
        with open(path, "w"):  # etc_write 5
            pass
    try:
        out = live.trigger(in_child(go))
    finally:
        remove(path)
    assert out.of("cred_shadow_read") and out.of("etc_write"), out.describe()
    assert_quiet(out, "container_risk")
