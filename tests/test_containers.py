"""cgroup path -> (runtime, container id, pod uid), on paths as kubelet, runtimes and the kernel write them."""
from __future__ import annotations

import os

import pytest

from fimstream.containers import (HOST, ContainerRef, iter_container_cgroups, normalize_pod_uid, parse_cgroup,
                                  split_container_id)

CID = "3f4c1e5d2b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a493827160"
CID2 = "9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
UID = "5b8e2c2d-4f1a-4b6e-9d3c-7a1e0f2b3c4d"
UID_ = UID.replace("-", "_")
STATIC_UID = "d41d8cd98f00b204e9800998ecf8427e"  # static pods: md5 of the manifest, no dashes

CASES = [
    # --- Kubernetes, systemd cgroup driver (cgroup v2 and the v1 pids/memory hierarchies look the same)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     ContainerRef("containerd", CID, UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     ContainerRef("containerd", CID, UID)),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",  # Guaranteed: no QoS slice
     ContainerRef("containerd", CID, UID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
     ContainerRef("cri-o", CID, UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
     ContainerRef("docker", CID, UID)),
    # cri-o's monitor is not the container
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope",
     ContainerRef("", "", UID)),
    # processes in a sub-cgroup of the container (systemd as PID 1 inside the container)
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope",
     ContainerRef("containerd", CID, UID)),
    # the pod's own slice (no container)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
     ContainerRef("", "", UID)),
    # static pod: 32-hex uid
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope",
     ContainerRef("containerd", CID, STATIC_UID)),
    # --- Kubernetes, cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", ContainerRef("", CID, UID)),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ContainerRef("", CID, UID)),
    (f"/kubepods/pod{UID}/{CID}", ContainerRef("", CID, UID)),  # Guaranteed
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", ContainerRef("cri-o", CID, UID)),
    (f"/kubepods/burstable/pod{UID}", ContainerRef("", "", UID)),
    (f"/kubepods/besteffort/pod{STATIC_UID}/{CID}", ContainerRef("", CID, STATIC_UID)),
    # --- nested: kind (nodes are docker containers; kubelet cgroup root /kubelet), k3d, DinD nodes
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     ContainerRef("containerd", CID, UID)),
    (f"/docker/{CID2}/kubepods/burstable/pod{UID}/{CID}", ContainerRef("", CID, UID)),
    (f"/system.slice/docker-{CID2}.scope/kubepods/besteffort/pod{UID}/{CID}", ContainerRef("", CID, UID)),
    # seen from inside a cgroup namespace: relative to the reader's own cgroup
    (f"/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope", ContainerRef("containerd", CID, UID)),
    (f"/../pod{UID}/{CID}", ContainerRef("", CID, UID)),
    # --- plain container engines
    (f"/docker/{CID}", ContainerRef("docker", CID, None)),
    (f"/system.slice/docker-{CID}.scope", ContainerRef("docker", CID, None)),
    (f"/machine.slice/libpod-{CID}.scope", ContainerRef("podman", CID, None)),
    (f"/machine.slice/libpod-{CID}.scope/container", ContainerRef("podman", CID, None)),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
     ContainerRef("podman", CID, None)),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{CID}.scope", HOST),
    (f"/libpod_parent/libpod-{CID}", ContainerRef("podman", CID, None)),
    (f"/libpod_parent/{CID}", ContainerRef("podman", CID, None)),
    (f"/system.slice/nerdctl-{CID}.scope", ContainerRef("containerd", CID, None)),
    (f"/default/{CID}", ContainerRef("", CID, None)),  # containerd namespace "default", cgroupfs
    ("/lxc/web01", ContainerRef("lxc", "web01", None)),
    ("/lxc.payload.web01", ContainerRef("lxc", "web01", None)),
    ("/lxc.payload.web01/system.slice/cron.service", ContainerRef("lxc", "web01", None)),
    ("/lxc.monitor.web01", HOST),
    # --- host processes
    ("/", HOST),
    ("", HOST),
    ("/init.scope", HOST),
    ("/system.slice/sshd.service", HOST),
    ("/system.slice/containerd.service", HOST),
    ("/system.slice/docker.service", HOST),
    ("/user.slice/user-0.slice/session-3.scope", HOST),
    ("/kubepods.slice", HOST),
    ("/kubepods.slice/kubepods-burstable.slice", HOST),
    ("/kubepods/besteffort", HOST),
    # near misses: too short to be a container id, not a uid
    (f"/docker/{CID[:12]}", HOST),
    ("/kubepods/burstable/podnotauid", HOST),
    (f"/system.slice/cri-containerd-{CID[:63]}.scope", HOST),
]


@pytest.mark.parametrize("path,expected", CASES, ids=[c[0][-60:] or "empty" for c in CASES])
def test_parse_cgroup_paths(path, expected):
    assert parse_cgroup(path) == expected
    assert parse_cgroup(path.encode()) == expected  # the collector reports kernel bytes


def test_upper_case_ids_are_lowered():
    ref = parse_cgroup(f"/system.slice/docker-{CID.upper()}.scope")
    assert ref == ContainerRef("docker", CID, None)


def test_proc_pid_cgroup_v2_line():
    text = f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    assert parse_cgroup(text) == ContainerRef("containerd", CID, UID)
    assert parse_cgroup(text.strip()) == ContainerRef("containerd", CID, UID)


def test_proc_pid_cgroup_v1_file_prefers_the_container():
    text = "\n".join([
        "12:hugetlb:/",
        f"11:memory:/kubepods/burstable/pod{UID}/{CID}",
        f"10:pids:/kubepods/burstable/pod{UID}/{CID}",
        "1:name=systemd:/",
        "0::/",
    ])
    assert parse_cgroup(text) == ContainerRef("", CID, UID)
    only_pod = f"11:memory:/kubepods/burstable/pod{UID}\n1:name=systemd:/\n"
    assert parse_cgroup(only_pod) == ContainerRef("", "", UID)
    assert parse_cgroup("12:cpu,cpuacct:/\n0::/init.scope\n") == HOST


def test_non_utf8_bytes_do_not_raise():
    assert parse_cgroup(b"/system.slice/\xff\xfe.service") == HOST
    ref = parse_cgroup(b"/weird\xff/docker/" + CID.encode())
    assert ref == ContainerRef("docker", CID, None)


def test_ref_properties():
    assert HOST.is_host and not HOST.in_pod
    assert ContainerRef("", "", UID).in_pod and not ContainerRef("", "", UID).is_host
    assert not ContainerRef("docker", CID, None).is_host


@pytest.mark.parametrize("raw,expected", [
    (UID_, UID), (UID, UID), (UID.upper(), UID), (STATIC_UID, STATIC_UID)])
def test_normalize_pod_uid(raw, expected):
    assert normalize_pod_uid(raw) == expected


@pytest.mark.parametrize("status_id,expected", [
    (f"containerd://{CID}", ("containerd", CID)),
    (f"cri-o://{CID}", ("cri-o", CID)),
    (f"docker://{CID}", ("docker", CID)),
    (f"docker://{CID.upper()}", ("docker", CID)),
    (CID, ("", CID)),
    ("", ("", "")),
])
def test_split_container_id(status_id, expected):
    assert split_container_id(status_id) == expected


def test_every_layout_agrees_with_the_pod_status_id():
    """The id in a cgroup path is exactly the id after `runtime://` in the pod status."""
    for runtime, path in [
        ("containerd", f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
        ("cri-o", f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope"),
        ("docker", f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"),
    ]:
        ref = parse_cgroup(path)
        assert split_container_id(f"{runtime}://{CID}") == (ref.runtime, ref.container_id)


def test_iter_container_cgroups(tmp_path):
    dirs = {
        "kubepods.slice/kubepods-burstable.slice": HOST,
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice": ContainerRef("", "", UID),
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope":
            ContainerRef("containerd", CID, UID),
        f"machine.slice/libpod-{CID2}.scope/container": ContainerRef("podman", CID2, None),
        "system.slice/sshd.service": HOST,
    }
    for d in dirs:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    found = {rel: (ino, ref) for rel, ino, ref in iter_container_cgroups(str(tmp_path))}
    expected = {"/" + d: ref for d, ref in dirs.items() if not ref.is_host}
    expected[f"/machine.slice/libpod-{CID2}.scope"] = ContainerRef("podman", CID2, None)
    assert {rel: ref for rel, (_, ref) in found.items()} == expected
    for rel, (ino, _) in found.items():
        assert ino == os.stat(str(tmp_path) + rel).st_ino
