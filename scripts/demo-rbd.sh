#!/usr/bin/env bash
# scripts/demo-rbd.sh -- blockgraph on Ceph: a qcow2 image stored in an rbd
# image of a throw-away one-node cluster, shown as a plain raw file over
# FUSE, written and read with ordinary tools, and judged by the real
# qemu-img through QEMU's own rbd driver.  Run by "make demo-rbd" after the
# build (which installs the Ceph packages, qemu-block-extra and fuse3);
# BLOCKGRAPH may point at the binary.  Starts its cluster with
# scripts/ceph-cluster.sh and stops and removes it on every exit path.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC=$PWD
BLOCKGRAPH=${BLOCKGRAPH:-$PWD/build/blockgraph}

if [[ ! -x $BLOCKGRAPH ]]; then
    echo "demo-rbd: $BLOCKGRAPH not found; run make first" >&2
    exit 1
fi
for tool in qemu-img qemu-io fusermount3 rbd ceph-mon ceph-osd; do
    command -v "$tool" >/dev/null || { echo "demo-rbd: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/blockgraph-demo-rbd.XXXXXX")
cluster=$workdir/ceph
mnt=$workdir/disk.raw
cleanup() {
    # Never leave a mount or a daemon behind, whatever failed.
    if mountpoint -q "$mnt" 2>/dev/null || grep -q " $mnt fuse" /proc/mounts; then
        "$BLOCKGRAPH" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    "$SRC/scripts/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    printf '\n==> %s\n' "$*"
}
run() {
    printf '$ %s\n' "$*"
    "$@"
}

cd "$workdir"

step "A one-node Ceph cluster (one monitor, one in-memory OSD) in $cluster"
run "$SRC/scripts/ceph-cluster.sh" start "$cluster"
export CEPH_CONF=$cluster/ceph.conf
img="rbd:rbd/demo:conf=$CEPH_CONF"

step "A 1 GiB qcow2 image whose bytes live in the rbd image rbd/demo"
run "$BLOCKGRAPH" img create -f qcow2 "$img" 1G
run rbd ls -l rbd

step "Mount it writable as a raw file and write through the mount with dd"
run "$BLOCKGRAPH" mount --rw -f qcow2 "$img" "$mnt"
run ls -l "$mnt"
head -c 4M /dev/urandom >payload
head -c 64k /dev/urandom >payload2
truncate -s 1G expected.raw
run dd if=payload of="$mnt" bs=64k seek=16 conv=notrunc,fsync status=none
run dd if=payload2 of="$mnt" bs=64k seek=16000 conv=notrunc,fsync status=none
dd if=payload of=expected.raw bs=64k seek=16 conv=notrunc status=none
dd if=payload2 of=expected.raw bs=64k seek=16000 conv=notrunc status=none
run cmp "$mnt" expected.raw && echo "read back through the mount: identical"
run "$BLOCKGRAPH" umount "$mnt"

step "The real qemu-img judges the image through QEMU's own rbd driver"
run qemu-img check -f qcow2 "$img"
run qemu-img info -f qcow2 "$img"
run qemu-img compare -f qcow2 -F raw "$img" expected.raw

step "Ceph's view: the rbd image grew as qcow2 allocated clusters"
run rbd info rbd/demo
run rbd du rbd/demo

step "blockgraph img, the qemu-img work-alike, on the same image"
run "$BLOCKGRAPH" img info -f qcow2 "$img"

step "Stop the cluster"
run "$SRC/scripts/ceph-cluster.sh" stop "$cluster"

printf '\ndemo-rbd: done\n'
