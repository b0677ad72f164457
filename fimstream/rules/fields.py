"""The field catalog: every field rules can use, defined once.

Each field has a name, a type, a doc line, the event types it belongs to (None = every event) and `code`:
a Python expression that reads it from a decoded EnrichedEvent dict. The compiler pastes `code` into the
functions it generates, `Field.read` evaluates it for one event (alert messages, tests), and docs/fields.md
is generated from this module (`fimstream rules docs`), so code and docs cannot drift.

Names available to `code` (bound once per event by the generated function):
    E  the event dict          P  E["process"]          A  E["attrs"]
    F  E["file"]  (or an empty File when None)          T  E["target"] (or an empty File)
    N  E["net"]   (or an empty Network)                 C  E["cred"]   (or an empty CredChange)
    K  E["k8s"]   (or an empty KubernetesContext; raw events have none)
Array fields have `each` (the iterable) and `code` over the element X; a comparison on an array field
is true if ANY element satisfies it (`!=`, `not in` and `!~` are the negation: no element satisfies the
positive form).

Types: path (bytes, `*` in globs stops at "/"), bytes (bytes, `*` matches anything), str, int, bool,
ip (text address; compares with addresses or CIDR blocks), duration (int ns; compare with 10s, 5m...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

EVENT_TYPES = (
    "open", "create", "write", "truncate", "unlink", "rmdir", "rename", "chmod", "chown", "link",
    "symlink", "mkdir", "mknod", "mount", "umount", "setxattr", "mmap", "memfd_create",
    "exec", "fork", "exit", "connect", "accept", "bind",
    "setuid", "setgid", "setgroups", "capset", "unshare", "setns", "loss",
)
"""Event types rules can select (the schema's EventType minus unknown and enforcement). `loss` is the
collector's own report that events were lost (ring buffer full) or dropped (Kafka buffer full), so a rule
can alert on blindness."""

EMPTY_FILE = {"path": b"", "path_flags": 0, "dev": 0, "ino": 0, "nlink": 0, "mode": 0, "uid": -1, "gid": -1,
              "mtime_ns": 0, "ctime_ns": 0}
EMPTY_NET = {"family": 0, "protocol": 0, "local_addr": "", "local_port": 0, "remote_addr": "", "remote_port": 0}
EMPTY_CRED = {k: -1 for k in ("old_uid", "old_euid", "old_gid", "old_egid", "new_uid", "new_euid", "new_gid",
                              "new_egid")} | {"old_caps": 0, "new_caps": 0}
EMPTY_K8S = {"namespace": "", "pod": "", "pod_uid": "", "labels": {}, "annotations": {}, "container_name": "",
             "image": "", "node": "", "workload_kind": "", "workload_name": "", "service_account": ""}

LOCALS = {  # name -> how the generated code binds it, in dependency order
    "P": 'E["process"]',
    "A": 'E["attrs"]',
    "F": 'E["file"] or _EMPTY_FILE',
    "T": 'E["target"] or _EMPTY_FILE',
    "N": 'E["net"] or _EMPTY_NET',
    "C": 'E["cred"] or _EMPTY_CRED',
    "K": 'E.get("k8s") or _EMPTY_K8S',
}
_LOCAL_RE = re.compile(r"\b([PAFTNCK])\b(?=\[|\.get)")


def _age(E, P, A):
    """process.age: event time minus process start. start_time_ns is boot-relative, so this needs the
    host's wall-clock boot time, which the collector puts in attrs["boot_ns"]; -1 when unknown."""
    boot = A.get("boot_ns")
    if not boot or not P["start_time_ns"]:
        return -1
    return E["time_ns"] - int(boot) - P["start_time_ns"]


def _count(A, key):
    """A counter the collector puts in attrs as text; 0 when absent or not a number."""
    v = A.get(key, "0")
    return int(v) if v.isdigit() else 0


def _since(E, t):
    """Event time minus a wall-clock timestamp of the event (a file's ctime...); -1 when it was not read."""
    return E["time_ns"] - t if t else -1


HELPERS = {"_EMPTY_FILE": EMPTY_FILE, "_EMPTY_NET": EMPTY_NET, "_EMPTY_CRED": EMPTY_CRED,
           "_EMPTY_K8S": EMPTY_K8S, "_age": _age, "_since": _since, "_count": _count}


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # path | bytes | str | int | bool | ip | duration
    doc: str
    code: str
    event_types: frozenset | None = None  # None: defined for every event
    each: str | None = None  # array fields: the iterable; `code` then reads element X
    # what the collector can test before publishing (approvers.py): path | name | exe | flags | mode in the
    # kernel; attr (a bool of the decoded record) in userspace, for records the kernel does not judge (exec)
    role: str | None = None
    slot: str | None = None  # for role path/name: which file of the event: "file" or "target"
    key: str | None = None  # family fields (k8s.labels.<key>): the key

    @property
    def is_array(self) -> bool:
        return self.each is not None

    @property
    def event_type(self) -> str | None:
        return next(iter(self.event_types)) if self.event_types and len(self.event_types) == 1 else None

    @cached_property
    def uses(self) -> tuple[str, ...]:
        found = set(_LOCAL_RE.findall(self.code + " " + (self.each or "")))
        if "_age(" in self.code:
            found |= {"P", "A"}
        if "_count(" in self.code:
            found.add("A")
        return tuple(name for name in LOCALS if name in found)

    def value_code(self) -> str:
        """Code of the whole value (arrays: a list)."""
        if self.is_array:
            return f"[{self.code} for X in {self.each}]"
        return self.code

    @cached_property
    def read(self):
        """Evaluate this field on one event dict (arrays give a list)."""
        lines = ["def _read(E):"] + [f"    {n} = {LOCALS[n]}" for n in self.uses] + [f"    return {self.value_code()}"]
        ns = dict(HELPERS)
        exec("\n".join(lines), ns)  # noqa: S102 - code comes from this catalog, never from rule files
        return ns["_read"]


# ----------------------------------------------------------------------------------- catalog tables
FILE_TYPES = {  # event type -> what `file` is for it
    "open": "the file opened", "create": "the file created", "write": "the file written (reported at close "
    "after a write)", "truncate": "the file truncated", "unlink": "the file removed", "rmdir": "the directory "
    "removed", "rename": "the source of the rename", "chmod": "the file whose mode changes", "chown": "the "
    "file whose owner changes", "link": "the existing file a hard link is made to", "symlink": "the symlink "
    "created", "mkdir": "the directory created", "mknod": "the node created", "setxattr": "the file whose "
    "extended attribute is set", "mmap": "the file mapped", "exec": "the executed file", "umount": "the "
    "mount point unmounted",
}
TARGET_TYPES = {"rename": "the new path of the renamed file", "link": "the new hard link",
                "symlink": "the path the symlink points to (as written; may be relative)"}
CREATE_MODE_TYPES = ("open", "create", "mkdir", "mknod")
FLAGS_TYPES = {"open": "open(2) flags (O_*)", "unlink": "unlinkat(2) flags (AT_REMOVEDIR)",
               "rename": "renameat2(2) flags (RENAME_*)", "mount": "mount(2) flags (MS_*)",
               "fork": "clone(2) flags (CLONE_*)", "unshare": "unshare(2) flags (CLONE_NEW*)",
               "setns": "setns(2) namespace kind (CLONE_NEW*)", "memfd_create": "memfd_create(2) flags (MFD_*)"}


def _file_fields(prefix: str, var: str, what: str, types: frozenset, slot: str) -> list[Field]:
    return [
        Field(f"{prefix}.path", "path", f"Absolute path of {what}.", f'{var}["path"]', types, role="path", slot=slot),
        Field(f"{prefix}.name", "bytes", f"Base name (last path component) of {what}.",
              f'{var}["path"].rpartition(b"/")[2]', types, role="name", slot=slot),
        Field(f"{prefix}.inode", "int", f"Inode number of {what}.", f'{var}["ino"]', types),
        Field(f"{prefix}.device", "int", f"Device number of the filesystem of {what}.", f'{var}["dev"]', types),
        Field(f"{prefix}.mode", "int", f"st_mode (type and permission bits) of {what}, before the change.",
              f'{var}["mode"]', types),
        Field(f"{prefix}.uid", "int", f"Owner uid of {what}, before the change.", f'{var}["uid"]', types),
        Field(f"{prefix}.gid", "int", f"Owner gid of {what}, before the change.", f'{var}["gid"]', types),
        Field(f"{prefix}.nlink", "int", f"Hard link count of {what}.", f'{var}["nlink"]', types),
        Field(f"{prefix}.deleted", "bool", f"{what[0].upper() + what[1:]} was already unlinked (deleted) "
              "when the event happened.", f'{var}["path_flags"] & 8 != 0', types,
              role="attr" if types == frozenset(["exec"]) else None),
        Field(f"{prefix}.path_resolved", "bool", f"The kernel resolved the full path of {what} (false: "
              "truncated, too deep, or the caller's unresolved string).", f'{var}["path_flags"] & 7 == 0', types),
    ]


def _build() -> dict[str, Field]:
    fields: list[Field] = []
    one = lambda t: frozenset([t])  # noqa: E731
    for t, what in FILE_TYPES.items():
        fields += _file_fields(f"{t}.file", "F", what, one(t), "file")
    for t, what in TARGET_TYPES.items():
        fields += _file_fields(f"{t}.file.destination", "T", what, one(t), "target")
    for t in CREATE_MODE_TYPES:
        fields.append(Field(f"{t}.file.destination.mode", "int", f"Mode requested for the new file ({t}).",
                            'E["mode"]', one(t), role="mode"))
    fields.append(Field("chmod.file.destination.mode", "int", "New mode set by chmod (permission bits).",
                        'E["mode"]', one("chmod"), role="mode"))
    fields.append(Field("chown.file.destination.uid", "int", "New owner uid (-1: unchanged).", 'E["owner_uid"]',
                        one("chown")))
    fields.append(Field("chown.file.destination.gid", "int", "New owner gid (-1: unchanged).", 'E["owner_gid"]',
                        one("chown")))
    for t, doc in FLAGS_TYPES.items():
        fields.append(Field(f"{t}.flags", "int", f"The {doc}.", 'E["flags"]', one(t), role="flags"))

    fields += [
        # exec
        Field("exec.args", "bytes", "Arguments of the new program, joined by spaces (argv[0] included).",
              'b" ".join(P["args"])', one("exec")),
        Field("exec.argv", "bytes", "Arguments of the new program, one element each.", "X", one("exec"),
              each='P["args"]'),
        Field("exec.argv0", "bytes", "argv[0] of the new program.", 'P["args"][0] if P["args"] else b""', one("exec")),
        Field("exec.args_truncated", "bool", "The argument list was cut (too long).", 'P["args_truncated"]',
              one("exec")),
        Field("exec.file.upper_layer", "bool", "The executed file lives in the writable (upper) layer of the "
              "container's overlay filesystem, i.e. it was written or changed after the container started "
              '(collector sets attrs["upper_layer"]="1").', 'A.get("upper_layer") == "1"', one("exec"), role="attr"),
        Field("exec.file.change_age", "duration", "Time between the executed file's last inode change (ctime: "
              "written, created, chmod, chown, renamed) and the exec; a file dropped and run at once is young "
              "(-1 when unknown, which no `<`/`>` comparison matches).", '_since(E, F["ctime_ns"])', one("exec")),
        Field("exec.file.modify_age", "duration", "Time between the executed file's last data modification "
              "(mtime, which `touch -d` can fake; prefer change_age) and the exec (-1 when unknown).",
              '_since(E, F["mtime_ns"])', one("exec")),
        Field("exec.setuid", "bool", "The exec changed the effective uid: a set-user-ID file.",
              'C["new_euid"] != C["old_euid"]', one("exec"), role="attr"),
        Field("exec.setgid", "bool", "The exec changed the effective gid: a set-group-ID file.",
              'C["new_egid"] != C["old_egid"]', one("exec"), role="attr"),
        Field("exec.caps_gained", "int", "Effective capabilities the exec added (set-user-ID root or file "
              "capabilities; test with CAP_* masks).", 'C["new_caps"] & ~C["old_caps"]', one("exec")),
        # mount
        Field("mount.source.path", "path", "Source of the mount (device or bind-mounted path).", 'F["path"]',
              one("mount"), role="path", slot="file"),
        Field("mount.mountpoint.path", "path", "Where the filesystem is mounted.", 'T["path"]', one("mount"),
              role="path", slot="target"),
        Field("mount.fs_type", "str", 'Filesystem type (attrs["fs_type"]).', 'A.get("fs_type", "")', one("mount")),
        # setxattr, mmap, memfd
        Field("setxattr.name", "str", 'Name of the extended attribute (attrs["name"]).', 'A.get("name", "")',
              one("setxattr")),
        Field("mmap.protection", "int", "Memory protection (PROT_*).", 'E["flags"] & 0xFFFFFFFF', one("mmap")),
        Field("mmap.flags", "int", "mmap flags (MAP_*).", 'E["flags"] >> 32', one("mmap")),
        Field("memfd_create.name", "str", 'Name given to the memfd (attrs["name"]).', 'A.get("name", "")',
              one("memfd_create")),
        # exit
        Field("exit.code", "int", "Exit status of the process.", 'E["exit_code"]', one("exit")),
        # loss (made by the collector itself)
        Field("loss.ringbuf_lost", "int", "Events the kernel could not put in the ring buffer since the last "
              "loss report (the collector was not reading fast enough).", '_count(A, "ringbuf_lost")', one("loss")),
        Field("loss.userspace_dropped", "int", "Events the collector dropped since the last loss report because "
              "its Kafka buffer was full (broker down or too slow).", '_count(A, "userspace_dropped")', one("loss")),
    ]
    for t, side, what in (("connect", "remote", "address connected to"), ("accept", "remote", "peer address"),
                          ("bind", "local", "address bound")):
        fields += [
            Field(f"{t}.addr.ip", "ip", f"IP {what}.", f'N["{side}_addr"]', one(t)),
            Field(f"{t}.addr.port", "int", f"Port of the {what}.", f'N["{side}_port"]', one(t)),
            Field(f"{t}.addr.family", "int", "Address family (AF_INET, AF_INET6, AF_UNIX...).", 'N["family"]', one(t)),
            Field(f"{t}.protocol", "int", "IP protocol (IPPROTO_TCP, IPPROTO_UDP).", 'N["protocol"]', one(t)),
        ]
    for t, ids in (("setuid", ("uid", "euid")), ("setgid", ("gid", "egid"))):
        for i in ids:
            fields.append(Field(f"{t}.{i}", "int", f"New {i}.", f'C["new_{i}"]', one(t)))
            fields.append(Field(f"{t}.old_{i}", "int", f"{i} before the change.", f'C["old_{i}"]', one(t)))
    fields += [
        Field("capset.caps", "int", "New capability set (mask; test with CAP_* masks).", 'C["new_caps"]', one("capset")),
        Field("capset.old_caps", "int", "Capability set before the change.", 'C["old_caps"]', one("capset")),
        Field("capset.gained", "int", "Capabilities present after but not before.", 'C["new_caps"] & ~C["old_caps"]',
              one("capset")),
    ]

    # ---- the process that caused the event (every event type)
    fields += [
        Field("process.pid", "int", "Process id (tgid).", 'P["pid"]'),
        Field("process.tid", "int", "Thread id.", 'P["tid"]'),
        Field("process.ppid", "int", "Parent process id.", 'P["ppid"]'),
        Field("process.uid", "int", "Real uid.", 'P["uid"]'),
        Field("process.gid", "int", "Real gid.", 'P["gid"]'),
        Field("process.euid", "int", "Effective uid.", 'P["euid"]'),
        Field("process.egid", "int", "Effective gid.", 'P["egid"]'),
        Field("process.auid", "int", "Login (audit) uid; 4294967295 when unset.", 'P["auid"]'),
        Field("process.comm", "str", "Command name (the kernel's 16-byte comm).", 'P["comm"]'),
        Field("process.file.path", "path", "Path of the process executable.", 'P["exe"]', role="exe"),
        Field("process.file.name", "bytes", "Base name of the process executable.", 'P["exe"].rpartition(b"/")[2]'),
        Field("process.file.inode", "int", "Inode of the process executable.", 'P["exe_ino"]'),
        Field("process.args", "bytes", "Process arguments joined by spaces.", 'b" ".join(P["args"])'),
        Field("process.argv", "bytes", "Process arguments, one element each.", "X", each='P["args"]'),
        Field("process.cgroup", "bytes", "cgroup path of the process.", 'P["cgroup"]'),
        Field("process.age", "duration", "Time since the process started (-1 when unknown, which no `<`/`>` "
              'comparison matches; needs attrs["boot_ns"] from the collector).', "_age(E, P, A)"),
        Field("process.parent.pid", "int", "Parent pid (0 without ancestry).",
              'P["ancestors"][0]["pid"] if P["ancestors"] else 0'),
        Field("process.parent.comm", "str", "Parent command name.",
              'P["ancestors"][0]["comm"] if P["ancestors"] else ""'),
        Field("process.parent.file.path", "path", "Parent executable path.",
              'P["ancestors"][0]["exe"] if P["ancestors"] else b""'),
        Field("process.parent.file.name", "bytes", "Parent executable base name.",
              'P["ancestors"][0]["exe"].rpartition(b"/")[2] if P["ancestors"] else b""'),
        Field("process.ancestors.pid", "int", "Pids of the ancestors, parent first.", 'X["pid"]',
              each='P["ancestors"]'),
        Field("process.ancestors.comm", "str", "Command names of the ancestors.", 'X["comm"]', each='P["ancestors"]'),
        Field("process.ancestors.file.path", "path", "Executable paths of the ancestors.", 'X["exe"]',
              each='P["ancestors"]'),
        Field("process.ancestors.file.name", "bytes", "Executable base names of the ancestors.",
              'X["exe"].rpartition(b"/")[2]', each='P["ancestors"]'),
        # ---- event
        Field("event.type", "str", "Event type (open, exec, ...). `event.type == \"x\"` and `event.type in [..]` "
              "select event types like a field prefix does.", 'E["event_type"]'),
        Field("event.retval", "int", "Syscall result; negative values are -errno.", 'E["retval"]'),
        Field("event.failed", "bool", "The syscall failed (retval < 0).", 'E["retval"] < 0'),
        Field("event.syscall", "str", "The hook that produced the event, e.g. openat2, io_uring:openat.",
              'E["syscall"]'),
        Field("event.host", "str", "Host name of the collector.", 'E["host"]'),
        # ---- container / kubernetes (enricher)
        Field("container.id", "str", "Container id (empty on the host).", 'E.get("container_id", "")'),
        Field("container.runtime", "str", "Container runtime (containerd, docker, cri-o...).",
              'E.get("container_runtime", "")'),
        Field("k8s.namespace", "str", "Pod namespace (empty outside Kubernetes).", 'K["namespace"]'),
        Field("k8s.pod", "str", "Pod name.", 'K["pod"]'),
        Field("k8s.pod_uid", "str", "Pod uid.", 'K["pod_uid"]'),
        Field("k8s.container", "str", "Container name in the pod spec.", 'K["container_name"]'),
        Field("k8s.image", "str", "Container image.", 'K["image"]'),
        Field("k8s.node", "str", "Node name.", 'K["node"]'),
        Field("k8s.workload.kind", "str", "Owning workload kind (Deployment, DaemonSet...).", 'K["workload_kind"]'),
        Field("k8s.workload.name", "str", "Owning workload name.", 'K["workload_name"]'),
        Field("k8s.service_account", "str", "Pod service account.", 'K["service_account"]'),
    ]
    out: dict[str, Field] = {}
    for f in fields:
        assert f.name not in out, f.name
        out[f.name] = f
    return out


FIELDS: dict[str, Field] = _build()

# Families: `k8s.labels.<key>` or `k8s.labels["key/with.dots"]`; missing keys read as "".
FAMILIES = {
    "k8s.labels": ("str", "Pod label <key> (missing label: empty string).", 'K["labels"].get({key!r}, "")'),
    "k8s.annotations": ("str", "Pod annotation <key>.", 'K["annotations"].get({key!r}, "")'),
    "event.attrs": ("str", "Type-specific extra attribute <key> from the collector.", 'A.get({key!r}, "")'),
}


def lookup(name: str, key: str | None = None) -> Field | None:
    """The field called `name` (with `key` for family fields written with brackets), or None."""
    if key is None:
        f = FIELDS.get(name)
        if f is not None:
            return f
        for family in FAMILIES:
            if name.startswith(family + ".") and len(name) > len(family) + 1:
                return lookup(family, name[len(family) + 1:])
        return None
    if name not in FAMILIES:
        return None
    ftype, doc, code = FAMILIES[name]
    return Field(f"{name}[{key!r}]", ftype, doc.replace("<key>", repr(key)), code.format(key=key), key=key)


def fields_for(event_type: str) -> list[Field]:
    return [f for f in FIELDS.values() if f.event_types is None or event_type in f.event_types]
