"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct/union member offsets by path.

The BPF programs never read a struct through the installed headers (Debian 6.1's here, whose layouts are
wrong for the running kernel: `task_struct.real_parent` is at 2432 in the headers, 1280 in reality).
Every offset the programs use comes from here and is compiled in as a `-D` macro (see offsets.py).

    btf = Btf.load()
    btf.offset("task_struct", "real_parent")        # -> Member(offset=1280, size=8, ...)
    btf.offset("file", "f_path", "dentry")          # f_path sits inside an anonymous member on 6.18
    btf.enum_value("cgroup_subsys_id", "pids_cgrp_id")

Members of anonymous structs/unions are found by descending into them, which is how C sees them.
Only what the collector needs is implemented: types, members (with bitfields), arrays, enums.
Format: Documentation/bpf/btf.rst (header, type section of `struct btf_type` + kind data, string section).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F

# kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# bytes of kind-specific data after the 12-byte btf_type: fixed, or per vlen entry
_FIXED_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}


class BtfError(LookupError):
    """A type or member the collector needs is not in this kernel's BTF."""


@dataclass(frozen=True)
class Member:
    offset: int  # bytes from the start of the outermost struct in the path
    size: int  # bytes of the member's type (0 when unsized, e.g. a flexible array)
    type_id: int  # the member's type, modifiers (typedef/const/volatile) stripped
    kind: int  # kind of that type (PTR, STRUCT, INT, ARRAY...)
    bit_offset: int = 0  # for bitfields: bit position within the byte at `offset`
    bit_size: int = 0  # 0 = not a bitfield


class Btf:
    def __init__(self, data: bytes):
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BtfError(f"not BTF data (magic {magic:#x})")
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        self._data = data
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        # type id -> (kind, vlen, kind_flag, name_off, size_or_type, offset of kind data); id 0 is void
        self._types: list[tuple[int, int, int, int, int, int]] = [(0, 0, 0, 0, 0, 0)]
        self._by_name: dict[tuple[int, str], list[int]] = {}
        self._parse(hdr_len + type_off, hdr_len + type_off + type_len)

    @classmethod
    def load(cls, path: str | Path = VMLINUX) -> "Btf":
        return cls(Path(path).read_bytes())

    # ------------------------------------------------------------------------------------- parsing
    def _parse(self, pos: int, end: int) -> None:
        data = self._data
        unpack = struct.Struct("<III").unpack_from
        types = self._types
        named = (STRUCT, UNION, ENUM, ENUM64, TYPEDEF)
        while pos < end:
            name_off, info, size_or_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            pos += 12
            types.append((kind, vlen, info >> 31, name_off, size_or_type, pos))
            if kind in named and name_off:
                self._by_name.setdefault((kind, self._name(name_off)), []).append(len(types) - 1)
            if kind in _PER_MEMBER:
                pos += vlen * _PER_MEMBER[kind]
            else:
                pos += _FIXED_EXTRA.get(kind, 0)

    def _name(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    # ------------------------------------------------------------------------------------- queries
    def find(self, name: str, kinds: tuple[int, ...] = (STRUCT, UNION)) -> int:
        """Type id of a named struct/union (the definition, never a forward declaration)."""
        for kind in kinds:
            ids = self._by_name.get((kind, name))
            if ids:
                return ids[0]
        raise BtfError(f"type '{name}' not found in kernel BTF")

    def has_type(self, name: str) -> bool:
        try:
            self.find(name)
            return True
        except BtfError:
            return False

    def func_id(self, name: str) -> int:
        """Type id of a kernel function (what a BPF program's attach_btf_id names). A linear scan: functions
        are not indexed, the lookup is rare (BPF-LSM detection)."""
        want = name.encode()
        strings = self._strings
        for type_id, (kind, _vlen, _kf, name_off, _st, _pos) in enumerate(self._types):
            if kind == FUNC and strings.startswith(want, name_off) and strings[name_off + len(want)] == 0:
                return type_id
        raise BtfError(f"function '{name}' not found in kernel BTF")

    def resolve(self, type_id: int) -> int:
        """Strip typedef/const/volatile/restrict/type-tag."""
        for _ in range(64):
            kind, _, _, _, target, _ = self._types[type_id]
            if kind not in _MODIFIERS:
                return type_id
            type_id = target
        raise BtfError(f"type {type_id}: modifier chain too long")

    def kind(self, type_id: int) -> int:
        return self._types[type_id][0]

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        kind, _, _, _, size_or_type, extra = self._types[type_id]
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return size_or_type
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, extra)
            return self.size(elem) * nelems
        return 0

    def type_name(self, type_id: int) -> str:
        return self._name(self._types[type_id][3])

    def members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct/union's direct members."""
        type_id = self.resolve(type_id)
        kind, vlen, kind_flag, _, _, pos = self._types[type_id]
        if kind not in (STRUCT, UNION):
            raise BtfError(f"type {self.type_name(type_id) or type_id} is not a struct or union")
        out = []
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, pos + 12 * i)
            if kind_flag:
                out.append((self._name(name_off), mtype, moff & 0xFFFFFF, moff >> 24))
            else:
                out.append((self._name(name_off), mtype, moff, 0))
        return out

    def _member(self, type_id: int, name: str) -> tuple[int, int, int] | None:
        """(type id, bit offset, bitfield size) of `name` in a struct/union, searching anonymous
        members depth-first like the C compiler does."""
        for mname, mtype, bit_off, bit_size in self.members(type_id):
            if mname == name:
                return mtype, bit_off, bit_size
            if not mname and self.kind(self.resolve(mtype)) in (STRUCT, UNION):
                inner = self._member(mtype, name)
                if inner is not None:
                    return inner[0], bit_off + inner[1], inner[2]
        return None

    def offset(self, struct_name: str, *path: str) -> Member:
        """Offset of a member path within `struct_name`. Every element but the last must be an embedded
        struct/union (a pointer in the middle is an error: dereferencing is the BPF program's job)."""
        if not path:
            raise ValueError("offset() needs at least one member name")
        type_id = self.find(struct_name)
        bits = 0
        bit_size = 0
        walked = struct_name
        for i, name in enumerate(path):
            if self.kind(self.resolve(type_id)) not in (STRUCT, UNION):
                raise BtfError(f"{walked} is not a struct or union (cannot look up '{name}')")
            found = self._member(type_id, name)
            if found is None:
                raise BtfError(f"{walked} has no member '{name}' in this kernel's BTF")
            type_id, moff, bit_size = found
            bits += moff
            walked = f"{walked}.{name}"
            if bit_size and i != len(path) - 1:
                raise BtfError(f"{walked} is a bitfield, not a struct")
        resolved = self.resolve(type_id)
        if bit_size:
            return Member(bits // 8, self.size(resolved), resolved, self.kind(resolved), bits % 8, bit_size)
        if bits % 8:
            raise BtfError(f"{walked} is not byte aligned ({bits} bits)")
        return Member(bits // 8, self.size(resolved), resolved, self.kind(resolved))

    def struct_size(self, name: str) -> int:
        return self.size(self.find(name))

    def enum_value(self, enum_name: str, value_name: str) -> int:
        type_id = self.find(enum_name, (ENUM, ENUM64))
        kind, vlen, kind_flag, _, _, pos = self._types[type_id]
        for i in range(vlen):
            if kind == ENUM:
                name_off, val = struct.unpack_from("<Ii" if kind_flag else "<II", self._data, pos + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 * i)
                val = lo | (hi << 32)
            if self._name(name_off) == value_name:
                return val
        raise BtfError(f"enum {enum_name} has no value {value_name}")

    def enumerator(self, value_name: str) -> int:
        """Value of an enumerator wherever it is declared, anonymous enums included (the kernel's
        `enum { REQ_F_FIXED_FILE_BIT = ..., }` has no name to look up)."""
        for kind, vlen, kind_flag, _, _, pos in self._types:
            if kind == ENUM:
                for i in range(vlen):
                    name_off, val = struct.unpack_from("<Ii" if kind_flag else "<II", self._data, pos + 8 * i)
                    if self._name(name_off) == value_name:
                        return val
            elif kind == ENUM64:
                for i in range(vlen):
                    name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 * i)
                    if self._name(name_off) == value_name:
                        return lo | (hi << 32)
        raise BtfError(f"no enumerator {value_name} in kernel BTF")

    def __len__(self) -> int:
        return len(self._types) - 1
