#!/usr/bin/env bash
# Set up Cannoli DB on a fresh Debian/Ubuntu machine and record the bundled
# example.  Installs only what is missing: system packages with apt-get (QEMU
# user-mode emulation, a C compiler, libc and capstone headers, Python venv support,
# cross compilers for the foreign-architecture tests, Java for the Spark test,
# libc's separate debug file (libc6-dbg: names and source lines inside libc) and
# the references the symbol tests compare with: gdb, binutils, Debian's xz;
# gdb-multiarch for the aarch64 gdbserver tests),
# then the Python package into .venv.  Safe to run again.
#
#   --qemu10   also build QEMU 10 from Debian 13's source with qemu_patches/
#              applied (`cannoli setup-qemu`, ~3 min the first time, then cached)
#
# One line per step.  apt-get and pip write to logs in build/setup/; a log is
# shown only when its step fails.
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
    default-jre-headless libc6-dbg gdb gdb-multiarch binutils xz-utils
    strace)  # strace: the reference of tests/test_strace_render.py
# what `cannoli setup-qemu` runs to fetch, patch and build QEMU 10
QEMU10_PACKAGES=(libglib2.0-dev flex bison ninja-build pkg-config dpkg-dev patch debian-archive-keyring)
if [ "$QEMU10" -eq 1 ]; then
    APT_PACKAGES+=("${QEMU10_PACKAGES[@]}")
fi

LOGS=build/setup
mkdir -p "$LOGS"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# quietly STEP LOG COMMAND...: run COMMAND with its output appended to LOG; if it
# fails, show the whole log and stop.
quietly() {
    local step=$1 log=$2 status=0
    shift 2
    "$@" >>"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "setup: $step failed (exit $status running: $*); its output ($log):" >&2
        cat "$log" >&2
        exit 1
    fi
}

# -- system packages
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    # python3-venv is not needed when python3 already makes virtual environments
    if [ "$pkg" = python3-venv ] && python3 -c 'import ensurepip, venv' 2>/dev/null; then
        continue
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: system packages: all ${#APT_PACKAGES[@]} present" >&2
else
    echo "setup: system packages: installing ${missing[*]} (apt-get; log: $LOGS/apt.log)" >&2
    : >"$LOGS/apt.log"
    quietly "apt-get update" "$LOGS/apt.log" as_root apt-get update -q
    quietly "apt-get install" "$LOGS/apt.log" \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# -- Python environment
echo "setup: Python environment: cannoli-db and its test dependencies into .venv (pip; log: $LOGS/pip.log)" >&2
: >"$LOGS/pip.log"
if [ ! -x .venv/bin/python ]; then
    quietly "python3 -m venv" "$LOGS/pip.log" python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
quietly "pip install --upgrade pip" "$LOGS/pip.log" "${pip[@]}" install --upgrade pip
quietly "pip install" "$LOGS/pip.log" "${pip[@]}" install -e '.[test]'

# -- QEMU 10: setup-qemu prints one line (cache hit) or one per build step
if [ "$QEMU10" -eq 1 ]; then
    .venv/bin/cannoli setup-qemu >/dev/null
fi

# -- the bundled example: build it, record it (its output goes to build/hello.out), describe the trace
cc -O1 -g -o build/hello examples/hello.c
.venv/bin/cannoli record --force -o build/hello.cannoli build/hello >build/hello.out
.venv/bin/cannoli info build/hello.cannoli >/dev/null
echo "setup: done (the example's output is in build/hello.out). Try: .venv/bin/cannoli info build/hello.cannoli" >&2
