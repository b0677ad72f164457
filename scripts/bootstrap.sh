#!/usr/bin/env bash
# Installs everything fimstream needs on a fresh Debian 12 machine (run as root):
# apt packages (bcc, kernel headers), the kernel headers link bcc looks for, tracefs/bpffs mounts,
# and the project's venv. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${FIMSTREAM_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
log() { printf '[bootstrap] %s\n' "$*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || { log "must run as root (eBPF, apt, mounts)"; exit 1; }; }

apt_packages() {
    local pkgs=(python3-bpfcc libbpfcc bpfcc-tools)
    local hdr
    # No headers exist for this kernel; bcc only needs *some* headers to compile (struct offsets come
    # from BTF at run time, never from these headers).
    hdr=$(ls -d /usr/src/linux-headers-6.1.0-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$hdr" ]; then
        hdr=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n1)
        pkgs+=("$hdr")
    fi
    command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
          || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
    fi
}

headers_link() {
    local k hdr common
    k=$(uname -r)
    [ -e "/lib/modules/$k/build/include" ] && return 0
    hdr=$(ls -d /usr/src/linux-headers-6.1.0-*-amd64 | sort -V | tail -n1)
    common=${hdr%-amd64}-common
    mkdir -p "/lib/modules/$k"
    ln -sfn "$hdr" "/lib/modules/$k/build"
    ln -sfn "$common" "/lib/modules/$k/source"
    log "linked /lib/modules/$k/{build,source} -> $hdr"
}

mounts() {
    mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
}

venv() {
    local stamp="$VENV/.fimstream-installed"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV"
        "$PY" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "pip install -e .[dev]"
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        "$VENV/bin/pip" install -q -e ".[dev]"
        touch "$stamp"
    fi
    # bcc is Debian's (python3-bpfcc); expose only the bcc package to the venv, not all of dist-packages.
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$VENV/debian-bcc"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
    echo "$VENV/debian-bcc" > "$site/debian-bcc.pth"
}

need_root
apt_packages
headers_link
mounts
venv
log "ready: $VENV"
