#!/usr/bin/env bash
# make test-arm64: the torch-free runtime on aarch64 Linux, under qemu-user-static.
#
# 1. An arm64 Debian root (debootstrap, minbase, python3), from the Debian mirror this
#    machine's apt uses, built once into a temporary folder and renamed when complete;
#    cached in $MNIST_EDGE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mnist-edge).
# 2. The case made on this machine by tests/arm64/prepare.py: digits, pictures, the
#    bundled ONNX files, .ort twins and this machine's answers (expected.json).
# 3. The project (its git-tracked files and the bundled models) installed in a venv in the
#    root with pip install '.[cpu,serve]', pip's downloads cached beside the root.
# 4. tests/arm64/test_arm64.py run in the root: mnist-infer, the Python API, mnist-serve
#    over HTTP and gRPC, each compared with expected.json.
#
# qemu-aarch64 is registered with binfmt_misc for the run only; the trap removes it and
# unmounts what the script mounted, on success, failure and Ctrl-C alike.
# Needs root (chroot, mount). Variables: HOST_PYTHON (the host venv's python, for step 2),
# MNIST_EDGE_CACHE, MIRROR (override the mirror read from apt's sources), ARGS (pytest options).
set -euo pipefail

SUITE=bookworm
INCLUDE=python3,python3-venv
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv/bin/python}
CACHE=${MNIST_EDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-edge}
ROOT=$CACHE/arm64-root-$SUITE
PIP_CACHE=$CACHE/pip-arm64
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_CONF=/usr/lib/binfmt.d/qemu-aarch64.conf
ARGS=${ARGS:-}

die() {
    echo "test-arm64: $*" >&2
    exit 2
}
need() { command -v "$1" >/dev/null 2>&1 || die "needs $1: apt-get install $2"; }

# What the trap undoes, in reverse order of doing it.
binfmt_mounted=0
binfmt_registered=0
mounts=()
partial=""

# Unmount every mount at or below $1 (deepest first); true when none is left.
unmount_below() {
    local dir=$1 m
    while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r)
    ! awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null ||
            echo "test-arm64: could not unmount ${mounts[i]}" >&2
    done
    if [ -n "$partial" ] && [ -d "$partial" ]; then
        if unmount_below "$partial"; then rm -rf "$partial"; else
            echo "test-arm64: $partial still has mounts; left in place" >&2
        fi
    fi
    if [ "$binfmt_registered" = 1 ] && [ -e "$BINFMT/qemu-aarch64" ]; then
        echo -1 >"$BINFMT/qemu-aarch64" || echo "test-arm64: could not remove $BINFMT/qemu-aarch64" >&2
    fi
    if [ "$binfmt_mounted" = 1 ]; then
        umount "$BINFMT" || echo "test-arm64: could not unmount $BINFMT" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The first deb (not deb-src) mirror that serves $1, from apt's deb822 and one-line sources.
apt_mirror() {
    local suite=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk -v suite="$suite" '
            function flush() { if (deb && hit && uri != "") { print uri; exit } deb = 0; hit = 0; uri = "" }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        awk -v suite="$suite" '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit } }' "$f"
    done
}

mount_in() { # mount_in TYPE-or---bind SOURCE TARGET
    mkdir -p "$3"
    if [ "$1" = --bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
    mounts+=("$3")
}

in_root() {
    env -i HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        QEMU_CPU=cortex-a72 PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_CACHE_DIR=/var/cache/pip-host \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PYTHONDONTWRITEBYTECODE=1 \
        chroot "$ROOT" "$@"
}

# --- checks, before any work ---
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount, binfmt_misc): run it as root"
need debootstrap debootstrap
need qemu-aarch64-static qemu-user-static
[ -e "$BINFMT_CONF" ] || die "needs $BINFMT_CONF: apt-get install qemu-user-static"
need git git
[ -x "$HOST_PYTHON" ] || die "needs the host venv's python at $HOST_PYTHON: run make venv"
MIRROR=${MIRROR:-$(apt_mirror "$SUITE" | head -n 1)}
[ -n "$MIRROR" ] || die "no deb source for $SUITE in /etc/apt/sources.list{,.d}: set MIRROR=http://your.debian.mirror/debian"
case $MIRROR in http://* | https://*) ;; *) die "mirror $MIRROR is not http(s): set MIRROR=http://your.debian.mirror/debian" ;; esac
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$CA" ] || die "needs a CA bundle at $CA (apt-get install ca-certificates, or set PIP_CERT)"

t0=$SECONDS
mkdir -p "$CACHE" "$PIP_CACHE"

# --- binfmt_misc: qemu-aarch64 for this run only ---
if [ ! -e "$BINFMT/register" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" ||
        die "cannot mount binfmt_misc on $BINFMT (a container needs --privileged)"
    binfmt_mounted=1
fi
if [ -e "$BINFMT/qemu-aarch64" ]; then
    echo "test-arm64: qemu-aarch64 is already registered with binfmt_misc; using it and leaving it"
else
    cat "$BINFMT_CONF" >"$BINFMT/register"
    binfmt_registered=1
fi

# --- the arm64 root, cached ---
STAMP_TEXT="debootstrap --arch=arm64 --foreign --variant=minbase --include=$INCLUDE $SUITE ROOT $MIRROR"
for old in "$CACHE"/arm64-root-"$SUITE".tmp.*; do # a run that was killed mid-build
    [ -d "$old" ] && unmount_below "$old" && rm -rf "$old"
done
if [ "$(cat "$ROOT/.mnist-edge-root" 2>/dev/null)" != "$STAMP_TEXT" ]; then
    echo "test-arm64: building the arm64 $SUITE root from $MIRROR (several minutes, once)"
    partial=$(mktemp -d "$CACHE/arm64-root-$SUITE.tmp.XXXXXX")
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" \
        "$SUITE" "$partial" "$MIRROR" >"$partial.log" 2>&1 ||
        die "debootstrap (first stage) failed; its log: $partial.log"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin QEMU_CPU=cortex-a72 \
        chroot "$partial" /debootstrap/debootstrap --second-stage >>"$partial.log" 2>&1 ||
        die "debootstrap --second-stage failed; its log: $partial.log"
    unmount_below "$partial" || die "$partial: debootstrap left mounts behind"
    echo "$STAMP_TEXT" >"$partial/.mnist-edge-root"
    if [ -d "$ROOT" ]; then
        unmount_below "$ROOT" || die "$ROOT has mounts: unmount them"
        rm -rf "$ROOT"
    fi
    mv "$partial" "$ROOT"
    mv "$partial.log" "$ROOT.log"
    partial=""
    echo "test-arm64: root ready in $((SECONDS - t0)) s (log: $ROOT.log)"
fi
unmount_below "$ROOT" || die "$ROOT has mounts from another run: unmount them"

# --- the case (made here, on x86) and the project ---
rm -rf "$ROOT/opt/case" "$ROOT/opt/mnist-edge"
"$HOST_PYTHON" "$REPO/tests/arm64/prepare.py" "$ROOT/opt/case"
mkdir -p "$ROOT/opt/mnist-edge"
(
    cd "$REPO"
    { git ls-files -z --cached && find tests/arm64 runtime/models -type f -print0; } |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        sort -zu | tar --null -T - -cf -
) | tar -C "$ROOT/opt/mnist-edge" -xf -
find "$ROOT/opt/mnist-edge" -name __pycache__ -prune -exec rm -rf {} +
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/ssl/certs"
cp "$CA" "$ROOT/etc/ssl/certs/host-ca.crt"

mount_in proc proc "$ROOT/proc"
mount_in tmpfs tmpfs "$ROOT/dev/shm" # multiprocessing's semaphores
mount_in --bind "$PIP_CACHE" "$ROOT/var/cache/pip-host"

# --- install and test in the root ---
t1=$SECONDS
[ -x "$ROOT/opt/venv/bin/python" ] || in_root python3 -m venv /opt/venv
in_root sh -c 'cd /opt/mnist-edge && python -m pip install --quiet ".[cpu,serve]" "pytest>=8.0" "pytest-timeout>=2.3"'
echo "test-arm64: installed in $((SECONDS - t1)) s; $(in_root python -c 'import platform, onnxruntime; print(platform.machine(), "Python", platform.python_version(), "onnxruntime", onnxruntime.__version__)')"
t2=$SECONDS
# shellcheck disable=SC2086 # ARGS: pytest options, split on purpose
in_root env MNIST_EDGE_ARM64_CASE=/opt/case sh -c 'cd /opt/mnist-edge && exec python -m pytest -p no:cacheprovider tests/arm64/test_arm64.py "$@"' pytest $ARGS
echo "test-arm64: tests took $((SECONDS - t2)) s; $((SECONDS - t0)) s in all"
"$HOST_PYTHON" - "$ROOT/opt/case/measured.json" <<'PY'
import json, sys
worst = json.load(open(sys.argv[1]))
print("test-arm64: labels equal to x86's; max |dp| per check:")
for check, dp in worst.items():
    print(f"  {check:42} {dp:.1e}")
PY
