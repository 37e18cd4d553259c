#!/usr/bin/env bash
# scripts/install-deps.sh -- install the Debian 12 packages blockgraph needs to
# build, test, run the demo and (later) fuzz.  Idempotent: does nothing when
# every package is installed; otherwise runs apt-get update and installs only
# the missing ones.  Needs root to install; never reads stdin.
set -euo pipefail

PACKAGES=(
    g++ make pkg-config           # toolchain
    libfuse3-dev fuse3            # FUSE export (fuse3 brings fusermount3)
    libglib2.0-dev                # event loop
    liburing-dev                  # io_uring
    zlib1g-dev libzstd-dev        # qcow2 compression
    check                         # unit tests
    nlohmann-json3-dev            # QAPI-style JSON options
    libgnutls28-dev gnutls-bin    # NBD TLS (gnutls-bin: certtool/psktool for the TLS tests)
    libnbd-bin python3-libnbd nbdkit  # NBD peers that judge the NBD tests
    qemu-utils qemu-system-common # qemu-img judges the integration tests
    fio                           # I/O load in integration tests and benchmarks
    python3                       # test helpers
    clang libclang-rt-14-dev      # fuzz target (libFuzzer runtime)
    librbd-dev librados-dev       # the rbd block driver (links -lrbd -lrados)
    ceph-mon ceph-osd             # scripts/ceph-cluster.sh: the one-node test cluster
    ceph-mgr                      # ceph-cluster.sh --mgr (usage statistics, rbd_support)
    ceph-common                   # ceph/rbd CLIs, ceph-authtool, monmaptool (cluster setup; judge rbd tests)
    qemu-block-extra              # QEMU's rbd driver module: qemu-img/qemu-io judge the rbd tests
    uuid-runtime                  # uuidgen (cluster fsid and OSD uuid)
    util-linux                    # setsid (cluster daemons run in their own session)
)

log() { printf 'install-deps: %s\n' "$*"; }

if ! command -v dpkg-query >/dev/null 2>&1; then
    log "dpkg-query not found: this script supports Debian 12 only" >&2
    log "needed packages: ${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    log "all ${#PACKAGES[@]} packages are installed"
    exit 0
fi

log "missing: ${missing[*]}"
apt_opts=(-o DPkg::Lock::Timeout=600)
install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if ((EUID != 0)); then
    log "not root; run as root:" >&2
    printf '  %s\n' "$install_cmd" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log "+ apt-get update"
apt-get "${apt_opts[@]}" update </dev/null
log "+ apt-get install -y --no-install-recommends ${missing[*]}"
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null

still=()
for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || still+=("$pkg")
done
if ((${#still[@]} > 0)); then
    log "still missing after apt-get: ${still[*]}" >&2
    exit 1
fi
log "installed ${#missing[@]} package(s)"
