#!/usr/bin/env bash
# Set up Cannoli DB on a fresh Debian/Ubuntu machine and record the bundled
# example.  Installs only what is missing: system packages with apt-get (QEMU
# user-mode emulation, a C compiler, libc and capstone headers, Python venv support,
# cross compilers for the foreign-architecture tests, Java for the Spark test,
# gdb and gdb-multiarch for the gdbserver tests),
# then the Python package into .venv.  Safe to run again.
#
#   --qemu10   also build QEMU 10 from Debian 13's source with qemu_patches/
#              applied (`cannoli setup-qemu`, ~3 min the first time, then cached)
set -euo pipefail
cd "$(dirname "$0")"

QEMU10=0
for arg in "$@"; do
    case "$arg" in
        --qemu10) QEMU10=1 ;;
        *) echo "setup: unknown option $arg (known: --qemu10)" >&2; exit 2 ;;
    esac
done

APT_PACKAGES=(qemu-user gcc libc6-dev libcapstone-dev python3-venv
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-mipsel-linux-gnu libc6-dev-mipsel-cross
    default-jre-headless gdb gdb-multiarch)
# what `cannoli setup-qemu` runs to fetch, patch and build QEMU 10
QEMU10_PACKAGES=(libglib2.0-dev flex bison ninja-build pkg-config dpkg-dev patch debian-archive-keyring)
if [ "$QEMU10" -eq 1 ]; then
    APT_PACKAGES+=("${QEMU10_PACKAGES[@]}")
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# python3-venv is not needed when python3 already makes virtual environments
if python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}")
fi
if [ -n "${missing[*]// /}" ]; then
    echo "setup: installing system packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ "$QEMU10" -eq 1 ]; then
    qemu10_bin=$(.venv/bin/cannoli setup-qemu)
    echo "setup: QEMU 10 is in $qemu10_bin" >&2
fi

# The bundled example: build it, record it, describe the trace.
mkdir -p build
cc -O1 -g -o build/hello examples/hello.c
.venv/bin/cannoli record --force -o build/hello.cannoli build/hello
.venv/bin/cannoli info build/hello.cannoli >/dev/null
echo "setup: done. Try: .venv/bin/cannoli info build/hello.cannoli" >&2
