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

from fimstream.collector.event import (EVENT_TYPES, H_AUID, H_CGROUP, H_COMM, H_EGID, H_EUID, H_GID, H_PID, H_PPID,
                                       H_SESSION, H_START, H_TID, H_UID, Event, FileRef)
from fimstream.collector.proctable import ProcInfo, ProcTable
from fimstream.schemas.codec import EventIds, avro_long

_TABLE_BITS = 14
_SMALL = [avro_long((z >> 1) ^ -(z & 1)) for z in range(1 << _TABLE_BITS)]  # indexed by the zig-zag value
_LIMIT = 1 << _TABLE_BITS
FILE_CACHE_MAX = 1 << 16


def enc_long(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    return _SMALL[z] if 0 <= z < _LIMIT else avro_long(n)


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


class RawEncoder:
    def __init__(self, host: str, procs: ProcTable, boot_offset_ns: int, ids: EventIds | None = None):
        self.host_enc = enc_str(host)
        self.procs = procs
        self.boot_offset_ns = boot_offset_ns
        self.ids = ids or EventIds()
        self._syscalls: dict[str, bytes] = {}
        self._files: dict[bytes, bytes] = {}
        self.stats = {"process_blocks": 0, "file_hits": 0, "file_misses": 0}

    # ----------------------------------------------------------------------------------- blocks
    def process_block(self, info: ProcInfo, hdr: tuple) -> bytes:
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
        info = self.procs.get(ev.hdr[H_PID], ev.hdr)
        block = info.blocks.get(ev.sig)
        if block is None:
            block = info.blocks[ev.sig] = self.process_block(info, ev.hdr)
        return info, block

    def file_block(self, f: FileRef | None) -> bytes:
        """The ["null", File] union."""
        if f is None:
            return NULL
        if f.key is not None:
            block = self._files.get(f.key)
            if block is not None:
                self.stats["file_hits"] += 1
                return block
        block = b"".join((b"\x02", enc_bytes(f.path), enc_long(f.flags), enc_long(f.dev), enc_long(f.ino),
                          enc_long(f.nlink), enc_long(f.mode), enc_long(f.uid), enc_long(f.gid)))
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
        sc = self._syscalls.get(ev.syscall)
        if sc is None:
            sc = self._syscalls[ev.syscall] = enc_str(ev.syscall)
        return b"".join((
            self.ids.next(),
            enc_long(ev.hdr[3] + self.boot_offset_ns),  # H_KTIME: boot-time clock -> wall clock
            _TYPE_ENC[ev.type],
            sc,
            self.host_enc,
            enc_long(ev.retval),
            process,
            self.file_block(ev.file),
            self.file_block(ev.target),
            enc_long(ev.flags),
            enc_long(ev.mode),
            enc_long(ev.owner_uid),
            enc_long(ev.owner_gid),
            NULL,  # net
            NULL,  # cred
            enc_long(ev.exit_code),
            self.attrs_block(ev.attrs),
        ))
