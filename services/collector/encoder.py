"""Hand-written Avro encoder for RawEvent (schemas/raw_event.avsc), built for the per-event budget.

fastavro's schemaless_writer costs tens of µs per RawEvent; here an event is the concatenation of
pre-encoded parts: the Process block (the largest part) is encoded once per thread context and reused
-- it lives on the ProcInfo (dropped with it on exec) under the header bytes that identify the thread's
context (pid, tid, ppid, start time, cgroup id, uids, login uid, session, comm), so a credential
change or a new comm gives a new block -- file blocks are cached by the raw slot bytes the kernel
sent, and small integers come from a table. tests/collector/test_encoder.py proves that fastavro
decodes the bytes to exactly the intended records.

Field order below must follow the schema; the test fails when the schema changes underneath.
"""
from __future__ import annotations

import struct

from fimstream.collector.event import (EVENT_TYPES, H_AUID, H_CGROUP, H_COMM, H_EGID, H_EUID, H_GID, H_PID, H_PPID,
                                       H_SESSION, H_START, H_TID, H_UID, CredInfo, Event, FileRef, KernelFile,
                                       NetInfo)
from fimstream.collector.proctable import ProcInfo, ProcTable
from fimstream.schemas.codec import EventIds, avro_long

_TABLE_BITS = 14
_SMALL = [avro_long((z >> 1) ^ -(z & 1)) for z in range(1 << _TABLE_BITS)]  # varint of a zig-zag value
_LIMIT = 1 << _TABLE_BITS
# two varint groups of 7 bits, both with the continuation bit: the low 14 bits of a larger value
_CONT = [bytes(((x & 0x7F) | 0x80, (x >> 7) | 0x80)) for x in range(1 << _TABLE_BITS)]
_HIGH: dict[int, bytes] = {}  # varint of z >> 28: timestamps share it for ~130 ms, inodes and devices for ever
FILE_CACHE_MAX = 1 << 16


def enc_long(n: int) -> bytes:
    """Avro long by table lookups: a varint is little-endian 7-bit groups, so a large value is the low
    groups (from _CONT) followed by the varint of what is left (_SMALL or the _HIGH cache)."""
    z = (n << 1) ^ (n >> 63)
    if z < _LIMIT:
        return _SMALL[z]
    if z < 1 << 28:
        return _CONT[z & 0x3FFF] + _SMALL[z >> 14]
    high = _HIGH.get(z >> 28)
    if high is None:
        if len(_HIGH) > 4096:
            _HIGH.clear()
        high = _HIGH[z >> 28] = _varint(z >> 28)
    return _CONT[z & 0x3FFF] + _CONT[(z >> 14) & 0x3FFF] + high


def _varint(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def enc_bytes(b: bytes) -> bytes:
    return enc_long(len(b)) + b


def enc_str(s: str) -> bytes:
    return enc_bytes(s.encode("utf-8"))


def text_bytes(b: bytes) -> bytes:
    """Kernel bytes that the schema types as `string` (comm, attrs): valid UTF-8, undecodable bytes as \\xNN."""
    try:
        b.decode("utf-8")
        return b
    except UnicodeDecodeError:
        return b.decode("utf-8", "backslashreplace").encode("utf-8")


NULL = b"\x00"
EMPTY = b"\x00"  # empty array / map
TRUE, FALSE = b"\x01", b"\x00"
_TYPE_ENC = [enc_long(i) for i in range(len(EVENT_TYPES))]
_U64BE = struct.Struct(">Q").pack


def net_block(net: NetInfo | None) -> bytes:
    """The ["null", Network] union."""
    if net is None:
        return NULL
    return b"".join((b"\x02", enc_long(net.family), enc_long(net.protocol), enc_str(net.local_addr),
                     enc_long(net.local_port), enc_str(net.remote_addr), enc_long(net.remote_port)))


def cred_block(cred: CredInfo | None) -> bytes:
    """The ["null", CredChange] union."""
    if cred is None:
        return NULL
    return b"\x02" + b"".join(enc_long(v) for v in (
        cred.old_uid, cred.old_euid, cred.old_gid, cred.old_egid, cred.new_uid, cred.new_euid, cred.new_gid,
        cred.new_egid, cred.old_caps, cred.new_caps))


class RawEncoder:
    def __init__(self, host: str, procs: ProcTable, boot_offset_ns: int, ids: EventIds | None = None):
        self.host_enc = enc_str(host)
        self.procs = procs
        self.boot_offset_ns = boot_offset_ns
        self.ids = ids or EventIds()
        self._id_prefix = self.ids.prefix
        self._seq = 0
        self._heads: dict[tuple[int, str], bytes] = {}
        self._tails: dict[tuple, bytes] = {}
        self._files: dict[bytes, bytes] = {}
        self.stats = {"process_blocks": 0, "file_hits": 0, "file_misses": 0}

    # ----------------------------------------------------------------------------------- blocks
    def process_block(self, info: ProcInfo, hdr: tuple) -> bytes:
        self.procs.sync_cgroup(info, hdr[H_CGROUP])  # a new block means a new signature: maybe a new cgroup
        anc = self.procs.ancestors(info)
        parts = [enc_long(hdr[H_PID]), enc_long(hdr[H_TID]), enc_long(hdr[H_PPID]), enc_long(hdr[H_START]),
                 enc_long(hdr[H_UID]), enc_long(hdr[H_GID]), enc_long(hdr[H_EUID]), enc_long(hdr[H_EGID]),
                 enc_long(hdr[H_AUID]), enc_long(hdr[H_SESSION]),
                 enc_bytes(text_bytes(hdr[H_COMM].split(b"\0", 1)[0])),
                 enc_bytes(info.exe), enc_long(info.exe_ino), enc_long(info.exe_dev)]
        if info.args:
            parts.append(enc_long(len(info.args)))
            parts.extend(enc_bytes(a) for a in info.args)
        parts.append(EMPTY)
        parts += [TRUE if info.args_truncated else FALSE, enc_long(hdr[H_CGROUP]), enc_bytes(info.cgroup)]
        if anc:
            parts.append(enc_long(len(anc)))
            for a in anc:
                parts += [enc_long(a.pid), enc_bytes(text_bytes(a.comm)), enc_bytes(a.exe)]
        parts.append(EMPTY)
        self.stats["process_blocks"] += 1
        return b"".join(parts)

    def process_for(self, ev: Event) -> tuple[ProcInfo, bytes]:
        info = self.procs.procs.get(ev.hdr[H_PID])
        if info is not None:  # fast path: the signature holds the start time, so a hit is this process
            block = info.blocks.get(ev.sig)
            if block is not None:
                return info, block
        info = self.procs.get(ev.hdr[H_PID], ev.hdr)  # miss: validates the start time, loads from /proc
        block = info.blocks.get(ev.sig)
        if block is None:
            block = info.blocks[ev.sig] = self.process_block(info, ev.hdr)
        return info, block

    def file_block(self, f: FileRef | KernelFile | None) -> bytes:
        """The ["null", File] union."""
        if f is None:
            return NULL
        if f.key is not None:
            block = self._files.get(f.key)
            if block is not None:
                self.stats["file_hits"] += 1
                return block
        path, flags, dev, ino, nlink, mode, uid, gid, mtime, ctime = f.avro_fields()
        block = b"".join((b"\x02", enc_bytes(path), enc_long(flags), enc_long(dev), enc_long(ino),
                          enc_long(nlink), enc_long(mode), enc_long(uid), enc_long(gid), enc_long(mtime),
                          enc_long(ctime)))
        if f.key is not None:
            self.stats["file_misses"] += 1
            if len(self._files) >= FILE_CACHE_MAX:
                self._files.clear()
            self._files[f.key] = block
        return block

    @staticmethod
    def attrs_block(attrs: dict[str, str] | None) -> bytes:
        if not attrs:
            return EMPTY
        parts = [enc_long(len(attrs))]
        for k, v in attrs.items():
            parts += [enc_str(k), enc_str(v)]
        parts.append(EMPTY)
        return b"".join(parts)

    # ----------------------------------------------------------------------------------- events
    def encode(self, ev: Event, process: bytes) -> bytes:
        head = self._heads.get((ev.type, ev.syscall))
        if head is None:  # event type + syscall + host: a handful of combinations
            head = self._heads[(ev.type, ev.syscall)] = _TYPE_ENC[ev.type] + enc_str(ev.syscall) + self.host_enc
        if ev.net is None and ev.cred is None:
            tail_key = (ev.flags, ev.mode, ev.owner_uid, ev.owner_gid, ev.exit_code)
            tail = self._tails.get(tail_key)
            if tail is None:  # flags .. exit_code, net and cred null: few distinct values in practice
                if len(self._tails) > 4096:
                    self._tails.clear()
                tail = self._tails[tail_key] = b"".join((
                    enc_long(ev.flags), enc_long(ev.mode), enc_long(ev.owner_uid), enc_long(ev.owner_gid),
                    NULL, NULL, enc_long(ev.exit_code)))
        else:  # network and credential events: rarer, encoded in full
            tail = b"".join((enc_long(ev.flags), enc_long(ev.mode), enc_long(ev.owner_uid), enc_long(ev.owner_gid),
                             net_block(ev.net), cred_block(ev.cred), enc_long(ev.exit_code)))
        self._seq += 1
        return b"".join((
            self._id_prefix, _U64BE(self._seq),
            enc_long(ev.hdr[3] + self.boot_offset_ns),  # H_KTIME: boot-time clock -> wall clock
            head,
            enc_long(ev.retval),
            process,
            self.file_block(ev.file),
            self.file_block(ev.target) if ev.target is not None else NULL,
            tail,
            self.attrs_block(ev.attrs) if ev.attrs else EMPTY,
        ))
