"""The BTF reader against the running kernel's /sys/kernel/btf/vmlinux (readable without root)."""
from __future__ import annotations

import struct

import pytest

from fimstream.collector import offsets
from fimstream.collector.btf import PTR, STRUCT, Btf, BtfError


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def test_parses_the_whole_type_section(btf):
    assert len(btf) > 10_000
    assert btf.struct_size("task_struct") > 1000


def test_member_inside_anonymous_members(btf):
    # 6.18 wraps file.f_path and dentry.d_name in anonymous unions/structs: C sees through them, so must we
    f_path = btf.offset("file", "f_path")
    assert f_path.kind == STRUCT
    assert btf.offset("file", "f_path", "dentry").offset == f_path.offset + btf.offset("path", "dentry").offset
    d_name = btf.offset("dentry", "d_name")
    assert btf.offset("dentry", "d_name", "len").offset == d_name.offset + btf.offset("qstr", "len").offset
    assert btf.offset("dentry", "d_name", "name").kind == PTR


def test_direct_members_of_the_named_struct(btf):
    direct = {name: bit // 8 for name, _, bit, _ in btf.members(btf.find("task_struct"))}
    assert btf.offset("task_struct", "real_parent").offset == direct["real_parent"]
    assert btf.offset("task_struct", "tgid").size == 4


def test_bitfields_report_bit_position(btf):
    # task_struct has bitfields (sched_reset_on_fork, in_execve...): pick any and check it is reported as one
    for name, _, _, bit_size in btf.members(btf.find("task_struct")):
        if bit_size:
            m = btf.offset("task_struct", name)
            assert m.bit_size == bit_size and 0 <= m.bit_offset < 8
            break
    else:
        pytest.skip("no bitfield in task_struct on this kernel")


def test_errors_say_what_is_missing(btf):
    with pytest.raises(BtfError, match="no member 'no_such_member'"):
        btf.offset("task_struct", "no_such_member")
    with pytest.raises(BtfError, match="not found"):
        btf.offset("no_such_struct_xyz", "x")
    with pytest.raises(BtfError, match="not a struct"):
        btf.offset("task_struct", "real_parent", "pid")  # a pointer: dereferencing is the program's job


def test_enum_values(btf):
    assert btf.enum_value("cgroup_subsys_id", "cpuset_cgrp_id") >= 0
    with pytest.raises(BtfError):
        btf.enum_value("cgroup_subsys_id", "nope")


def test_enumerators_of_anonymous_enums(btf):
    # io_uring's REQ_F_*_BIT live in an unnamed enum; the first ones mirror the uapi IOSQE_* bits
    assert btf.enumerator("REQ_F_FIXED_FILE_BIT") == 0 and btf.enumerator("REQ_F_CQE_SKIP_BIT") == 6
    assert btf.enumerator("IORING_OP_OPENAT") == btf.enum_value("io_uring_op", "IORING_OP_OPENAT") == 18
    with pytest.raises(BtfError, match="NO_SUCH_ENUMERATOR"):
        btf.enumerator("NO_SUCH_ENUMERATOR")


def test_a_sensor_table_of_offsets(btf):
    needs = {"O_SOCKET_SK": offsets.Need(("socket", "sk"), 8), "O_X": offsets.Need(("sock", "nope"), optional=True)}
    assert offsets.compute(btf, needs=needs) == {"O_SOCKET_SK": btf.offset("socket", "sk").offset, "O_X": -1}
    with pytest.raises(offsets.OffsetError, match=r"O_BAD \(socket.sk\) is 8 bytes, the program reads 4"):
        offsets.compute(btf, needs={"O_BAD": offsets.Need(("socket", "sk"), 4)})


def test_every_offset_the_programs_need_exists(btf):
    found = offsets.compute(btf)
    assert set(found) == set(offsets.NEEDS)
    assert all(v >= 0 for k, v in found.items() if not offsets.NEEDS[k].optional)


def test_rejects_data_that_is_not_btf():
    with pytest.raises(BtfError, match="magic"):
        Btf(struct.pack("<HBBIIIII", 0x1234, 1, 0, 24, 0, 0, 0, 0))
